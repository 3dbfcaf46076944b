//! One `cluster-node` process: spawned with its name and dump dir, which it keeps across its
//! restarts, its stderr appended to a log file of its own; signalled at will.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a node may take to print `listening` (a debug build, on a busy machine).
const LISTENING_WITHIN: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM (its final dumps, the lease released).
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// What every node of a cluster is started with, besides its name and dump dir.
#[derive(Clone, Debug)]
pub(crate) struct NodeArgs {
    pub(crate) redis: String,
    pub(crate) vista: String,
    pub(crate) token: String,
    pub(crate) time_zone: String,
    pub(crate) lease: Duration,
    pub(crate) refresh: Duration,
}

/// A node: its process while it runs, and what outlives the process.
pub(crate) struct Node {
    pub(crate) name: String,
    dump_dir: TempDir,
    log_path: PathBuf,
    child: Option<Child>,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) paused: bool,
    starts: u32,
}

impl Node {
    /// A node not started yet, logging to `<logs>/<name>.log`.
    pub(crate) fn new(name: &str, logs: &Path) -> Node {
        Node {
            name: name.to_owned(),
            dump_dir: TempDir::with_prefix(format!("cluster-{name}-"))
                .expect("a temp dump dir for a node"),
            log_path: logs.join(format!("{name}.log")),
            child: None,
            addr: None,
            paused: false,
            starts: 0,
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn dump_dir(&self) -> &Path {
        self.dump_dir.path()
    }

    /// Starts the process and returns once it prints `listening ADDR`; panics with its log if
    /// it exits or stays silent.
    pub(crate) async fn spawn(&mut self, args: &NodeArgs) -> SocketAddr {
        assert!(self.child.is_none(), "{} is running already", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open a node's log");
        writeln!(log, "--- {} start #{}", self.name, self.starts).expect("write a node's log");
        let dump_dir = self.dump_dir.path().to_str().expect("a UTF-8 temp path");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cluster-node"))
            .args(["--name", &self.name, "--redis", &args.redis])
            .args(["--vista", &args.vista, "--token", &args.token])
            .args(["--time-zone", &args.time_zone, "--dump-dir", dump_dir])
            .args(["--lease-ms", &args.lease.as_millis().to_string()])
            .args(["--refresh-ms", &args.refresh.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn cluster-node");
        let stdout = child.stdout.take().expect("a piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(LISTENING_WITHIN, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening ") {
                    return addr.parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await;
        let Ok(Some(addr)) = listening else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!(
                "{} did not print `listening ADDR` within {LISTENING_WITHIN:?}; its log ends:\n{}",
                self.name,
                self.log_tail(40)
            );
        };
        // The node prints nothing more, but a closed pipe would fail a later print.
        let log_path = self.log_path.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut log) = OpenOptions::new().append(true).open(&log_path) {
                    let _ = writeln!(log, "stdout: {line}");
                }
            }
        });
        self.child = Some(child);
        self.addr = Some(addr);
        self.paused = false;
        addr
    }

    /// Sends `signal` to the running process.
    pub(crate) fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("a running node");
        let pid = child.id().expect("a process not yet reaped");
        let pid = Pid::from_raw(i32::try_from(pid).expect("a pid fits i32")).expect("a pid");
        kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("cannot send {signal:?} to {}: {e}", self.name));
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(crate) async fn kill(&mut self) {
        let mut child = self.child.take().expect("a running node");
        self.addr = None;
        self.paused = false;
        child.start_kill().expect("SIGKILL a node");
        child.wait().await.expect("wait for a killed node");
    }

    /// SIGTERM, and waits for the process to exit (panics with its log if it does not).
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::TERM);
        let mut child = self.child.take().expect("a running node");
        self.addr = None;
        match tokio::time::timeout(EXIT_WITHIN, child.wait()).await {
            Ok(status) => status.expect("wait for a terminated node"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!(
                    "{} did not exit within {EXIT_WITHIN:?} of SIGTERM; its log ends:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
        }
    }

    /// The log of every start so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process; `kill_on_drop` would too, but not before
        // the temp dirs go.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
