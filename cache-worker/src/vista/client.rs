//! [`VistaClient`]: the HTTP client of the Vista Connect OData API.

use std::ffi::OsString;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{StatusCode, Url};

use super::error::{VistaError, truncate_body};
use super::model::{
    Cinema, Film, Parsed, Session, parse_cinemas, parse_films, parse_one_session, parse_session_id,
    parse_sessions,
};

/// The header that carries the API token.
const TOKEN_HEADER: &str = "connectapitoken";
/// The fields of a session that are read; asked for with `$select` to keep answers small.
const SESSION_FIELDS: &str = "ID,CinemaId,ScheduledFilmId,Showtime,SessionBusinessDate,ScreenName,SeatsAvailable,SessionAttributesNames";
/// What an OData query value may leave unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A client of a Vista Connect server's OData API.
///
/// Cheap to clone (the connection pool is shared). Every request is a `GET` with the token in
/// the `connectapitoken` header, a timeout (30 s by default) and up to 3 attempts: a 5xx or 429
/// answer and a request that got no answer (timeout, refused or reset connection) are retried
/// after a back-off that doubles from 250 ms (at most 10 s); other answers are not.
///
/// TLS is rustls with the *ring* provider and the platform's root certificates; plain `http`
/// is allowed (for loopback and tests). Redirects are not followed, so that the token never
/// reaches another host: a 3xx is a [`VistaError::Status`].
///
/// ```no_run
/// # async fn demo() -> Result<(), cache_worker::vista::VistaError> {
/// use std::time::Duration;
/// use cache_worker::vista::VistaClient;
///
/// let client = VistaClient::new("https://vista.example:8080/WSVistaWebClient/", "secret")?
///     .with_timeout(Duration::from_secs(10))
///     .with_attempts(5);
/// let sessions = client.sessions().await?;
/// println!("{} sessions ({} unreadable rows skipped)", sessions.items.len(), sessions.skipped);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VistaClient {
    http: reqwest::Client,
    /// The base URL, ending with `/`.
    base: Url,
    token: HeaderValue,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
    time_zone: TimeZone,
}

impl fmt::Debug for VistaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VistaClient")
            .field("base_url", &self.base.as_str())
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field(
                "time_zone",
                &self.time_zone.iana_name().unwrap_or("<unnamed>"),
            )
            .finish()
    }
}

impl VistaClient {
    /// The default request timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default number of attempts of one request (the first and two retries).
    pub const DEFAULT_ATTEMPTS: u32 = 3;
    /// The default wait before the first retry; it doubles with each further one.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(250);

    /// A client of the server at `base_url` (such as
    /// `https://vista.example:8080/WSVistaWebClient/`; a missing final `/` is added) with the API
    /// token `token`. Showtimes are read in the system's time zone (see
    /// [`with_time_zone`](VistaClient::with_time_zone)).
    ///
    /// # Errors
    ///
    /// [`VistaError::Config`] if the URL is not an `http`/`https` URL, the token is empty or not
    /// a valid header value, or (for `https`) no CA certificates can be loaded.
    pub fn new(base_url: &str, token: &str) -> Result<VistaClient, VistaError> {
        let base = parse_base_url(base_url)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(VistaError::Config(
                "the Vista API token is empty: set VISTA_API_TOKEN to the connectapitoken value"
                    .to_owned(),
            ));
        }
        let mut token = HeaderValue::from_str(token).map_err(|_| {
            VistaError::Config(
                "the Vista API token contains characters not allowed in an HTTP header".to_owned(),
            )
        })?;
        token.set_sensitive(true);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(base.scheme() == "https")?)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cache-worker-vista/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| VistaError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(VistaClient {
            http,
            base,
            token,
            timeout: Self::DEFAULT_TIMEOUT,
            attempts: Self::DEFAULT_ATTEMPTS,
            backoff: Self::DEFAULT_BACKOFF,
            time_zone: TimeZone::system(),
        })
    }

    /// A client configured by the environment: `VISTA_API_URL` (the base URL) and
    /// `VISTA_API_TOKEN` (the `connectapitoken` value).
    ///
    /// # Errors
    ///
    /// [`VistaError::Config`] naming the variable that is missing, empty or not Unicode, or any
    /// error of [`new`](VistaClient::new).
    pub fn from_env() -> Result<VistaClient, VistaError> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// [`from_env`](VistaClient::from_env) over any source of variables.
    fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<VistaClient, VistaError> {
        let read = |name: &str, what: &str| -> Result<String, VistaError> {
            let value = var(name)
                .ok_or_else(|| VistaError::Config(format!("{name} is not set: set it to {what}")))?
                .into_string()
                .map_err(|_| VistaError::Config(format!("{name} is not valid Unicode")))?;
            if value.trim().is_empty() {
                return Err(VistaError::Config(format!(
                    "{name} is empty: set it to {what}"
                )));
            }
            Ok(value)
        };
        let url = read(
            "VISTA_API_URL",
            "the Vista Connect base URL, such as https://vista.example:8080/WSVistaWebClient/",
        )?;
        let token = read(
            "VISTA_API_TOKEN",
            "the Vista Connect API token (connectapitoken)",
        )?;
        Self::new(&url, &token)
    }

    /// Sets the timeout of each attempt, from connecting to the end of the body (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> VistaClient {
        self.timeout = timeout;
        self
    }

    /// Sets how many times a request is tried in all (default 3; 1 means no retry; 0 is taken
    /// as 1).
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> VistaClient {
        self.attempts = attempts.max(1);
        self
    }

    /// Sets the wait before the first retry (default 250 ms); it doubles with each further
    /// retry, up to 10 s.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration) -> VistaClient {
        self.backoff = backoff;
        self
    }

    /// Sets the cinema's time zone, in which the naive showtimes are read (default: the
    /// system's, which honours `TZ`). See [`Session::starts_at`].
    #[must_use]
    pub fn with_time_zone(mut self, time_zone: TimeZone) -> VistaClient {
        self.time_zone = time_zone;
        self
    }

    /// The base URL, ending with `/`.
    #[must_use]
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The timeout of each attempt.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many times a request is tried in all.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The cinema's time zone.
    #[must_use]
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// All cinemas (`OData.svc/Cinemas`).
    ///
    /// # Errors
    ///
    /// Any [`VistaError`] but `InvalidRow` (unreadable rows are skipped and counted).
    pub async fn cinemas(&self) -> Result<Parsed<Cinema>, VistaError> {
        parse_cinemas(&self.get("Cinemas", "OData.svc/Cinemas").await?)
    }

    /// All scheduled films (`OData.svc/GetScheduledFilms`), one per film id.
    ///
    /// # Errors
    ///
    /// Any [`VistaError`] but `InvalidRow` (unreadable rows are skipped and counted).
    pub async fn films(&self) -> Result<Parsed<Film>, VistaError> {
        parse_films(
            &self
                .get("GetScheduledFilms", "OData.svc/GetScheduledFilms")
                .await?,
        )
    }

    /// All sessions (`OData.svc/Sessions`).
    ///
    /// # Errors
    ///
    /// Any [`VistaError`] but `InvalidRow` (unreadable rows are skipped and counted).
    pub async fn sessions(&self) -> Result<Parsed<Session>, VistaError> {
        let path = format!("OData.svc/Sessions?$select={SESSION_FIELDS}");
        parse_sessions(&self.get("Sessions", &path).await?)
    }

    /// One session (`OData.svc/Sessions?$filter=ID eq '<id>'`); `None` if the server no longer
    /// has it. An id that is not `"<CinemaId>-<SessionId>"` cannot exist: it is `None` without
    /// a request.
    ///
    /// # Errors
    ///
    /// Any [`VistaError`]; [`VistaError::InvalidRow`] if the server's row for this id cannot be
    /// read (which does not prove that the session is gone).
    pub async fn session(&self, id: &str) -> Result<Option<Session>, VistaError> {
        if parse_session_id(id).is_none() {
            return Ok(None);
        }
        let filter = format!("ID eq '{}'", id.replace('\'', "''"));
        let path = format!(
            "OData.svc/Sessions?$filter={}&$select={SESSION_FIELDS}",
            utf8_percent_encode(&filter, QUERY_VALUE)
        );
        parse_one_session(&self.get("Sessions", &path).await?, id)
    }

    /// `GET`s `path` (relative to the base URL) with retries, and returns a 200's body.
    async fn get(&self, collection: &'static str, path: &str) -> Result<Vec<u8>, VistaError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| VistaError::Config(format!("cannot build the URL of {path:?}: {e}")))?;
        let mut delay = self.backoff;
        let mut attempt = 1;
        loop {
            match self.get_once(url.clone()).await {
                Ok(body) => return Ok(body),
                Err(error) if attempt < self.attempts && is_retryable(&error) => {
                    tracing::warn!(
                        collection,
                        attempt,
                        attempts = self.attempts,
                        retry_in = ?delay,
                        %error,
                        "Vista request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt of a `GET`.
    async fn get_once(&self, url: Url) -> Result<Vec<u8>, VistaError> {
        let response = self
            .http
            .get(url)
            .header(TOKEN_HEADER, self.token.clone())
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(VistaError::Http)?;
        let status = response.status();
        let body = response.bytes().await.map_err(VistaError::Http)?;
        if status == StatusCode::OK {
            return Ok(body.into());
        }
        let code = status.as_u16();
        let body = truncate_body(String::from_utf8_lossy(&body).into_owned());
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                VistaError::Unauthorized { status: code, body }
            }
            _ if status.is_server_error() => VistaError::Server { status: code, body },
            _ => VistaError::Status { status: code, body },
        })
    }
}

/// Whether another attempt may help: a server failure, a rate limit, or no answer at all.
/// (Every request is a `GET`, so a retry never repeats a side effect.)
fn is_retryable(error: &VistaError) -> bool {
    match error {
        VistaError::Server { .. } | VistaError::Http(_) => true,
        VistaError::Status { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS.as_u16(),
        _ => false,
    }
}

/// Parses and checks the base URL; makes it end with `/` so that joining keeps its path.
fn parse_base_url(base_url: &str) -> Result<Url, VistaError> {
    let trimmed = base_url.trim();
    if trimmed.is_empty() {
        return Err(VistaError::Config(
            "the Vista base URL is empty: set VISTA_API_URL, such as \
             https://vista.example:8080/WSVistaWebClient/"
                .to_owned(),
        ));
    }
    let mut url = Url::parse(trimmed)
        .map_err(|e| VistaError::Config(format!("invalid Vista base URL {trimmed:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(VistaError::Config(format!(
            "the Vista base URL {trimmed:?} must start with http:// or https://"
        )));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The rustls configuration: the *ring* provider (no C toolchain beyond `cc`, no OpenSSL), the
/// platform's roots for `https` bases. A plain-`http` base gets an empty root store, so it
/// works on machines without CA certificates; it never does TLS, since redirects are off.
fn tls_config(https: bool) -> Result<rustls::ClientConfig, VistaError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VistaError::Config(format!("TLS setup: {e}")))?;
    let builder = if https {
        let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(|e| {
            VistaError::Config(format!(
                "cannot load the system's CA certificates for https: {e}"
            ))
        })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    } else {
        builder.with_root_certificates(rustls::RootCertStore::empty())
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(result: Result<VistaClient, VistaError>) -> String {
        match result {
            Err(VistaError::Config(message)) => message,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn base_url_gets_a_final_slash() -> Result<(), VistaError> {
        let client = VistaClient::new("http://127.0.0.1:9/WSVistaWebClient", "t")?;
        assert_eq!(client.base_url(), "http://127.0.0.1:9/WSVistaWebClient/");
        let url = client
            .base
            .join("OData.svc/Cinemas")
            .map_err(|e| VistaError::Config(e.to_string()))?;
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/WSVistaWebClient/OData.svc/Cinemas"
        );
        Ok(())
    }

    #[test]
    fn https_client_builds() -> Result<(), VistaError> {
        let client = VistaClient::new("https://vista.example:8080/WSVistaWebClient/", "t")?;
        assert_eq!(
            client.base_url(),
            "https://vista.example:8080/WSVistaWebClient/"
        );
        Ok(())
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(config_error(VistaClient::new("", "t")).contains("VISTA_API_URL"));
        assert!(config_error(VistaClient::new("not a url", "t")).contains("not a url"));
        assert!(config_error(VistaClient::new("ftp://x/", "t")).contains("http"));
        assert!(config_error(VistaClient::new("http://x/", "  ")).contains("VISTA_API_TOKEN"));
        assert!(config_error(VistaClient::new("http://x/", "a\nb")).contains("header"));
    }

    #[test]
    fn environment_variables_are_named() {
        let none = |_: &str| None;
        assert!(config_error(VistaClient::from_vars(none)).contains("VISTA_API_URL is not set"));
        let url_only = |name: &str| (name == "VISTA_API_URL").then(|| "http://x/".into());
        assert!(
            config_error(VistaClient::from_vars(url_only)).contains("VISTA_API_TOKEN is not set")
        );
        let empty_token = |name: &str| match name {
            "VISTA_API_URL" => Some("http://x/".into()),
            _ => Some("".into()),
        };
        assert!(
            config_error(VistaClient::from_vars(empty_token)).contains("VISTA_API_TOKEN is empty")
        );
        let both = |name: &str| match name {
            "VISTA_API_URL" => Some("http://x/".into()),
            _ => Some("secret".into()),
        };
        assert!(VistaClient::from_vars(both).is_ok());
    }

    #[test]
    fn debug_hides_the_token() -> Result<(), VistaError> {
        let client = VistaClient::new("http://x/", "very-secret")?;
        assert!(!format!("{client:?}").contains("very-secret"));
        Ok(())
    }

    #[test]
    fn filter_is_percent_encoded() {
        let filter = format!("ID eq '{}'", "1001-17024");
        assert_eq!(
            utf8_percent_encode(&filter, QUERY_VALUE).to_string(),
            "ID%20eq%20%271001-17024%27"
        );
    }

    #[test]
    fn setters() -> Result<(), VistaError> {
        let client = VistaClient::new("http://x/", "t")?
            .with_timeout(Duration::from_secs(5))
            .with_attempts(0)
            .with_time_zone(TimeZone::UTC);
        assert_eq!(client.timeout(), Duration::from_secs(5));
        assert_eq!(client.attempts(), 1);
        assert_eq!(client.time_zone(), &TimeZone::UTC);
        Ok(())
    }
}
