//! A real `redis-server` for the Redis tests (feature `redis`): started on a free loopback port
//! in a temp dir of its own, killed, paused and restarted on that port at will, removed on drop.
//! Never skipped: without `redis-server` on the PATH the test fails, saying how to install it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a start or restart may take before the test fails with the server's log.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed (and its temp dir removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: TempDir,
    /// The options after `--port`, `--bind`, `--dir`, ... as given at the start.
    args: Vec<String>,
    password: Option<String>,
    /// The certificate files of a TLS server, read again at each restart.
    certs: Option<TempDir>,
}

/// The certificates of a TLS server: a CA of its own, and a server certificate it signed for
/// `localhost` and `127.0.0.1`.
pub struct Tls {
    /// The CA certificate, PEM: what a client trusts.
    pub ca_pem: Vec<u8>,
}

impl RedisServer {
    /// A server without persistence (`--save '' --appendonly no`): a restart loses everything.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// A server with an append-only file fsynced at every write: its data survives `kill`.
    pub async fn start_persistent() -> RedisServer {
        RedisServer::launch(
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            None,
        )
        .await
    }

    /// [`RedisServer::start`] with extra options (`&["--requirepass", "s3cret"]`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut args = vec!["--save", "", "--appendonly", "no"];
        args.extend_from_slice(extra);
        RedisServer::launch(&args, None).await
    }

    /// A non-persistent server that also listens for TLS on [`RedisServer::tls_port`], with a
    /// certificate for `localhost` signed by the returned CA. The plain port stays open (for
    /// [`RedisServer::cli`]).
    pub async fn start_tls() -> (RedisServer, Tls) {
        let dir = TempDir::with_prefix("redis-tls-").expect("a temp dir for the certificates");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cache-worker test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().expect("a server key");
        let server_cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server parameters")
                .signed_by(&server_key, &issuer)
                .expect("the server certificate");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write a certificate");
            path.to_str().expect("a UTF-8 temp path").to_owned()
        };
        let cert = write("server.crt", &server_cert.pem());
        let key = write("server.key", &server_key.serialize_pem());
        let ca = write("ca.crt", &ca_cert.pem());
        let tls_port = free_port();
        let tls_port_text = tls_port.to_string();
        let args = [
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-port",
            &tls_port_text,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let mut server = RedisServer::launch(&args, Some(tls_port)).await;
        server.certs = Some(dir);
        (
            server,
            Tls {
                ca_pem: ca_cert.pem().into_bytes(),
            },
        )
    }

    async fn launch(args: &[&str], tls_port: Option<u16>) -> RedisServer {
        let dir = TempDir::with_prefix("redis-").expect("a temp dir for redis-server");
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let password = args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| args.get(i + 1).cloned());
        let mut server = RedisServer {
            child: None,
            port: 0,
            tls_port,
            dir,
            args,
            password,
            certs: None,
        };
        // Another process may take the free port between its probe and the server's bind.
        for attempt in 1..=5 {
            server.port = free_port();
            server.spawn();
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    server.reap();
                }
                Err(log) => panic!(
                    "redis-server did not start on port {} within {READY_WITHIN:?}; its log ends:\n{log}",
                    server.port
                ),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    /// `redis://127.0.0.1:<port>/` (with the password, if the server requires one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// `rediss://localhost:<tls port>/`, for a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a server started with start_tls");
        format!("rediss://localhost:{port}/")
    }

    /// The plain TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port of a server from [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The server's process id (it changes at each restart).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running redis-server").id()
    }

    /// SIGKILL, then waits for the process to exit: nothing is flushed that was not already.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child may have exited already; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().expect("wait for redis-server to exit");
        }
    }

    /// Kills the server if it runs, and starts it again on the same port and in the same dir
    /// (so that an append-only file is replayed); returns once it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(log) = self.wait_ready().await {
            panic!(
                "redis-server did not restart on port {} within {READY_WITHIN:?}; its log ends:\n{log}",
                self.port
            );
        }
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing.
    pub fn pause(&self) {
        kill_process(self.rustix_pid(), Signal::STOP).expect("SIGSTOP redis-server");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        kill_process(self.rustix_pid(), Signal::CONT).expect("SIGCONT redis-server");
    }

    /// Runs one command on a fresh connection and returns its reply as text: bulk strings as
    /// they are (lossy UTF-8), integers in decimal, `(nil)`, arrays one element a line, an
    /// error reply as `(error) <message>`.
    pub async fn cli(&self, args: &[&str]) -> String {
        let client = ::redis::Client::open(self.url()).expect("the server's URL");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test redis-server");
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = ::redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        match cmd.query_async::<::redis::Value>(&mut con).await {
            Ok(value) => text(&value),
            Err(e) => format!("(error) {e}"),
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn rustix_pid(&self) -> Pid {
        let pid = i32::try_from(self.pid()).expect("a pid fits i32");
        Pid::from_raw(pid).expect("a non-zero pid")
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the redis-server log");
        let mut marker = &log;
        writeln!(marker, "--- starting redis-server on port {}", self.port).expect("write the log");
        let stderr: File = log.try_clone().expect("the log for stderr");
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("a UTF-8 temp path");
        let spawned = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir", dir])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn();
        match spawned {
            Ok(child) => self.child = Some(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server not found: install Debian's redis-server (apt-get install \
                 redis-server), or run scripts/test, which installs it"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
    }

    /// Kills and reaps a child that failed to start.
    fn reap(&mut self) {
        self.kill();
    }

    /// Waits until the server answers PING (or NOAUTH, which also means it serves); on failure
    /// returns the tail of its log.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("(exited: {status})\n{}", self.log_tail()));
            }
            if ping(self.port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) server.
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("its address").port()
}

/// Whether a server on `port` answers an inline PING with `+PONG` or `-NOAUTH` (not `-LOADING`,
/// which a server replaying its append-only file answers).
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 64];
        let n = stream.read(&mut reply).await?;
        Ok::<bool, std::io::Error>(
            reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}

/// A reply as text, for assertions.
fn text(value: &::redis::Value) -> String {
    use ::redis::Value;
    match value {
        Value::Nil => "(nil)".to_owned(),
        Value::Int(n) => n.to_string(),
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".to_owned(),
        Value::Array(items) | Value::Set(items) => {
            items.iter().map(text).collect::<Vec<_>>().join("\n")
        }
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{}\n{}", text(k), text(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Double(d) => d.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::ServerError(e) => format!("(error) {e:?}"),
        other => format!("{other:?}"),
    }
}
