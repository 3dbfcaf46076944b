//! The HTTP routes of a worker (feature `http`) as a client sees them: a server on loopback,
//! a reader of Server-Sent Events, and a client-side copy of the bucket fed by the JSON.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use cache_worker::{CacheWorker, Changes, Worker};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::task::JoinHandle;

/// A worker's router nested at `/sessions` of a server on `127.0.0.1`, served until dropped.
pub struct Served {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Served {
    pub async fn start<W: CacheWorker>(worker: &Worker<W>) -> Self {
        let app = axum::Router::new().nest("/sessions", cache_worker::http::router(worker.clone()));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Served { addr, task }
    }

    /// `http://127.0.0.1:port/sessions` followed by `path` (`""`, `"?since=3"`, `"/events"`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/sessions{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client with no pooling surprises: each SSE stream gets its own connection.
pub fn client() -> reqwest::Client {
    // Only needed when another feature built reqwest with rustls but no provider; a second
    // install (by another test) is refused, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client")
}

/// `GET url`: the status, the headers and the body as JSON.
pub async fn get_json(url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = client().get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("a body");
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, headers, json)
}

/// One SSE message: a dispatched event, or a comment line.
#[derive(Clone, Debug, PartialEq)]
pub enum Sse {
    Event {
        event: String,
        id: Option<String>,
        data: String,
    },
    Comment(String),
}

impl Sse {
    pub fn is_comment(&self) -> bool {
        matches!(self, Sse::Comment(_))
    }

    /// The event's type and data as JSON; panics on a comment.
    pub fn json(&self) -> (&str, Value) {
        match self {
            Sse::Event { event, data, .. } => (
                event,
                serde_json::from_str(data)
                    .unwrap_or_else(|e| panic!("data not JSON ({e}): {data}")),
            ),
            Sse::Comment(text) => panic!("a comment, not an event: {text}"),
        }
    }

    /// The event's id as a version; panics on a comment or an event without one.
    pub fn version(&self) -> u64 {
        match self {
            Sse::Event { id: Some(id), .. } => id.parse().expect("a numeric id"),
            other => panic!("no id: {other:?}"),
        }
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// Reads `text/event-stream` as the SSE standard parses it: `field: value` lines, a blank
/// line dispatches, lines starting with `:` are comments (kept here, to be seen).
pub struct SseReader {
    body: Body,
    buffer: Vec<u8>,
    /// Where the unparsed part of `buffer` starts.
    start: usize,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
    ended: bool,
}

impl SseReader {
    /// `GET url` with `Last-Event-ID: last_event_id` if given; the response must be a stream.
    pub async fn open(url: &str, last_event_id: Option<u64>) -> Self {
        let mut request = client().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("GET events");
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let content_type = response.headers()["content-type"].to_str().expect("ASCII");
        assert_eq!(content_type, "text/event-stream");
        Self::new(response)
    }

    pub fn new(response: reqwest::Response) -> Self {
        SseReader {
            body: Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map(|b| b.to_vec())),
            ),
            buffer: Vec::new(),
            start: 0,
            event: None,
            id: None,
            data: None,
            ended: false,
        }
    }

    /// The next message; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            while let Some(end) = self.buffer[self.start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8(self.buffer[self.start..self.start + end].to_vec())
                    .expect("UTF-8");
                self.start += end + 1;
                if let Some(message) = self.line(line.strip_suffix('\r').unwrap_or(&line)) {
                    return Some(message);
                }
            }
            self.buffer.drain(..self.start);
            self.start = 0;
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(error)) => panic!("the stream broke: {error}"),
                None => self.ended = true,
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<Sse> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(Sse::Event {
                event: self.event.take().unwrap_or_else(|| "message".into()),
                id: self.id.take(),
                data,
            });
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(Sse::Comment(comment.trim_start().to_owned()));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "event" => self.event = Some(value),
            "id" => self.id = Some(value),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value),
            },
            _ => {}
        }
        None
    }

    /// The next event, skipping comments; panics if none comes within `limit`.
    pub async fn event_within(&mut self, limit: Duration) -> Sse {
        tokio::time::timeout(limit, async {
            loop {
                match self.next().await {
                    Some(message) if message.is_comment() => {}
                    Some(message) => return message,
                    None => panic!("the stream ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event within {limit:?}"))
    }

    /// The next event if one comes within `limit` (comments skipped); panics if the stream ends.
    pub async fn try_event(&mut self, limit: Duration) -> Option<Sse> {
        tokio::time::timeout(limit, self.event_within(Duration::MAX))
            .await
            .ok()
    }

    /// [`event_within`](Self::event_within) 5 s.
    pub async fn event(&mut self) -> Sse {
        self.event_within(Duration::from_secs(5)).await
    }

    /// The next message, comments included, within 5 s.
    pub async fn message(&mut self) -> Option<Sse> {
        tokio::time::timeout(Duration::from_secs(5), self.next())
            .await
            .expect("a message within 5 s")
    }
}

/// A key as the copy keeps it: a JSON string as itself, anything else as its JSON text.
fn key_of(key: &Value) -> String {
    key.as_str().map_or_else(|| key.to_string(), str::to_owned)
}

/// A client's copy of the bucket, kept as a page would: replaced by a `full`, changed by a
/// `delta` or an SSE `change` (values, patches applied with `json_patch::merge`, removals).
#[derive(Debug, Default)]
pub struct JsonCopy {
    pub entries: HashMap<String, Value>,
    /// The version of the last answer or event applied.
    pub version: Option<u64>,
    pub patches: usize,
}

impl JsonCopy {
    /// Applies a body of `GET /` (or the data of an SSE `full`).
    pub fn apply_body(&mut self, body: &Value) -> Result<(), String> {
        let version = body["version"]
            .as_u64()
            .ok_or(format!("no version: {body}"))?;
        match body["kind"].as_str() {
            Some("full") => {
                self.entries.clear();
                for entry in body["entries"].as_array().ok_or("no entries")? {
                    self.entries
                        .insert(key_of(&entry["key"]), entry["value"].clone());
                }
            }
            Some("delta") => {
                if body["from"].as_u64() != self.version {
                    return Err(format!(
                        "a delta from {} to a copy at {:?}",
                        body["from"], self.version
                    ));
                }
                for change in body["changes"].as_array().ok_or("no changes")? {
                    self.apply_change(change)?;
                }
            }
            Some("no_change") => {
                if Some(version) != self.version {
                    return Err(format!(
                        "no_change at {version} to a copy at {:?}",
                        self.version
                    ));
                }
            }
            _ => return Err(format!("unknown kind: {body}")),
        }
        self.version = Some(version);
        Ok(())
    }

    /// Applies one change (`{"key","value"}`, `{"key","patch"}` or `{"key","removed":true}`).
    pub fn apply_change(&mut self, change: &Value) -> Result<(), String> {
        let key = key_of(&change["key"]);
        if let Some(value) = change.get("value") {
            self.entries.insert(key, value.clone());
        } else if let Some(patch) = change.get("patch") {
            let held = self.entries.get_mut(&key).ok_or(format!(
                "a patch for {key}, which the copy does not hold: {change}"
            ))?;
            json_patch::merge(held, patch);
            self.patches += 1;
        } else if change.get("removed") == Some(&Value::Bool(true)) {
            self.entries.remove(&key);
        } else {
            return Err(format!("not a change: {change}"));
        }
        Ok(())
    }

    /// Applies an SSE event (`full` or `change`); its id must be above the copy's version.
    pub fn apply_sse(&mut self, message: &Sse) -> Result<(), String> {
        let (event, data) = message.json();
        let version = message.version();
        if self.version.is_some_and(|at| version <= at) {
            return Err(format!(
                "event {version} after {:?}: {message:?}",
                self.version
            ));
        }
        match event {
            "full" => {
                self.apply_body(&data)?;
                if data["version"].as_u64() != Some(version) {
                    return Err(format!("a full with id {version}: {message:?}"));
                }
            }
            "change" => {
                self.apply_change(&data)?;
                self.version = Some(version);
            }
            other => return Err(format!("unknown event {other}")),
        }
        Ok(())
    }
}

/// The worker's bucket now, as the JSON copy of it should be.
pub fn bucket_as_json<W: CacheWorker>(worker: &Worker<W>) -> (u64, HashMap<String, Value>) {
    let Changes::Full { version, entries } = worker.changes_since(None) else {
        panic!("changes_since(None) is a Full");
    };
    let entries = entries
        .into_iter()
        .map(|(key, value)| {
            let key = serde_json::to_value(&key).expect("a key as JSON");
            (
                key_of(&key),
                serde_json::to_value(&*value).expect("a value as JSON"),
            )
        })
        .collect();
    (version, entries)
}
