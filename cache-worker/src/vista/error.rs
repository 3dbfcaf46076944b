//! What can go wrong when talking to a Vista server.

/// An error of the [`VistaClient`](crate::vista::VistaClient).
///
/// Every variant says what happened and what to look at. Statuses are plain `u16`s, bodies are
/// the server's answer cut to [`MAX_BODY`](VistaError::MAX_BODY) bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VistaError {
    /// The server refused the API token (HTTP 401 or 403).
    #[error(
        "the Vista server refused the API token (HTTP {status}): check the `connectapitoken` \
         value, which comes from VISTA_API_TOKEN; the server said: {body}"
    )]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's answer.
        body: String,
    },
    /// The server failed (HTTP 5xx), on every attempt.
    #[error("the Vista server failed with HTTP {status} (retries exhausted): {body}")]
    Server {
        /// The 5xx status of the last attempt.
        status: u16,
        /// The server's answer to the last attempt.
        body: String,
    },
    /// Any other answer than 200 (for example 404 for a wrong base URL, or 400).
    #[error("the Vista server answered HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The server's answer.
        body: String,
    },
    /// The answer was not the OData JSON expected (`{"value": [...]}`).
    #[error("malformed JSON in the Vista {collection} answer: {source}")]
    Json {
        /// The collection asked for, such as `Sessions`.
        collection: &'static str,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A single requested row could not be read (see [`Session`](crate::vista::Session)'s
    /// mapping rules). In a whole collection such a row is skipped instead.
    #[error("unreadable row in the Vista {collection} answer: {reason}")]
    InvalidRow {
        /// The collection asked for, such as `Sessions`.
        collection: &'static str,
        /// Why the row was refused.
        reason: String,
    },
    /// The request did not get an answer: connection refused, timeout, reset, TLS failure.
    #[error("could not get an answer from the Vista server: {0}")]
    Http(#[source] reqwest::Error),
    /// The client is misconfigured: a missing environment variable, a bad URL or token.
    #[error("Vista client configuration: {0}")]
    Config(String),
}

impl VistaError {
    /// How many bytes of a server's answer an error keeps.
    pub const MAX_BODY: usize = 2048;

    /// The HTTP status, for the variants that carry one.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            VistaError::Unauthorized { status, .. }
            | VistaError::Server { status, .. }
            | VistaError::Status { status, .. } => Some(*status),
            VistaError::Http(error) => error.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// Whether the request timed out.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, VistaError::Http(error) if error.is_timeout())
    }
}

/// Cuts a body to [`VistaError::MAX_BODY`] bytes, on a character boundary.
pub(crate) fn truncate_body(mut body: String) -> String {
    if body.len() > VistaError::MAX_BODY {
        let mut end = VistaError::MAX_BODY;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
        body.push_str("… (truncated)");
    }
    body
}
