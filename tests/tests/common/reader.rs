//! The always-on reader: every ~20 ms it GETs `/sessions` from every node that is up, and
//! counts the answers that are not a 200 with entries. A node killed, paused or restarted
//! while a read is in flight does not count against it: each target has an epoch, bumped at
//! every change of the node's state, and a read whose target moved on is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

/// The pause between two rounds of reads.
const EVERY: Duration = Duration::from_millis(20);
/// An answer slower than this is a failed read.
const READ_WITHIN: Duration = Duration::from_secs(3);
/// How many failures are kept with their reason.
const KEPT: usize = 20;

/// Where each node serves, while it is up (running and not paused).
#[derive(Clone, Default)]
pub(crate) struct Targets(Arc<Mutex<Vec<Target>>>);

#[derive(Clone, Default)]
struct Target {
    /// `http://127.0.0.1:PORT/sessions`, while the node is up.
    url: Option<String>,
    epoch: u64,
}

impl Targets {
    fn lock(&self) -> MutexGuard<'_, Vec<Target>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Node `node` serves at `url` from now on, or (`None`) is down.
    pub(crate) fn set(&self, node: usize, url: Option<String>) {
        let mut targets = self.lock();
        if targets.len() <= node {
            targets.resize(node + 1, Target::default());
        }
        targets[node].url = url;
        targets[node].epoch += 1;
    }

    fn epoch(&self, node: usize) -> u64 {
        self.lock()[node].epoch
    }

    fn round(&self) -> Vec<(usize, u64, String)> {
        self.lock()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.url.clone().map(|url| (i, t.epoch, url)))
            .collect()
    }
}

/// The reads so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// 200s with entries.
    pub served: u64,
    /// Anything else: an error status, no entries, no answer within 3 s, no connection.
    pub failed: u64,
}

#[derive(Default)]
struct Counts {
    served: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// The reader task, stopped on drop.
pub(crate) struct Reader {
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Reader {
    pub(crate) fn spawn(client: reqwest::Client, targets: Targets) -> Reader {
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(run(client, targets, Arc::clone(&counts)));
        Reader { counts, task }
    }

    pub(crate) fn reads(&self) -> Reads {
        Reads {
            served: self.counts.served.load(Ordering::SeqCst),
            failed: self.counts.failed.load(Ordering::SeqCst),
        }
    }

    /// The first failures, each with its node and reason.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.counts
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(client: reqwest::Client, targets: Targets, counts: Arc<Counts>) {
    loop {
        let mut reads = JoinSet::new();
        for (node, epoch, url) in targets.round() {
            let client = client.clone();
            reads.spawn(async move { (node, epoch, read(&client, &url).await) });
        }
        while let Some(done) = reads.join_next().await {
            let Ok((node, epoch, result)) = done else {
                continue;
            };
            if targets.epoch(node) != epoch {
                continue;
            }
            match result {
                Ok(()) => {
                    counts.served.fetch_add(1, Ordering::SeqCst);
                }
                Err(reason) => {
                    counts.failed.fetch_add(1, Ordering::SeqCst);
                    let mut kept = counts
                        .failures
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if kept.len() < KEPT {
                        kept.push(format!("node {node}: {reason}"));
                    }
                }
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// One read: a 200 whose bucket has at least one entry.
async fn read(client: &reqwest::Client, url: &str) -> Result<(), String> {
    let answer = async {
        let response = client.get(url).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if status != reqwest::StatusCode::OK {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        // The full answer is `{"kind":"full","version":N,"entries":[{"key":…`: a search is
        // enough, and costs less than parsing 362 sessions 50 times a second.
        if !body.windows(13).any(|w| w == b"\"entries\":[{\"") {
            let start = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            return Err(format!("no entries: {start}"));
        }
        Ok(())
    };
    match tokio::time::timeout(READ_WITHIN, answer).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {READ_WITHIN:?}")),
    }
}
