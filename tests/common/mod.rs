//! Helpers for end-to-end tests that drive the real `logfleet` binary.
#![allow(dead_code)]

pub mod fake_api;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_logfleet")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process whose output goes to a log file, killed with SIGKILL on drop.
pub struct Proc {
    pub name: String,
    /// The HTTP address, for an aggregator.
    pub http: String,
    args: Vec<String>,
    /// Environment set on top of the test's.
    pub env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn start(name: &str, args: &[String], logs: &Path) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            http: String::new(),
            args: args.to_vec(),
            env: Vec::new(),
            log: logs.join(format!("{name}.log")),
            child: None,
        };
        p.restart();
        p
    }

    /// Like [`Proc::start`], with environment variables (as a ConfigMap's
    /// `envFrom` sets them).
    pub fn start_with_env(
        name: &str,
        args: &[String],
        env: &[(String, String)],
        logs: &Path,
    ) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            http: String::new(),
            args: args.to_vec(),
            env: env.to_vec(),
            log: logs.join(format!("{name}.log")),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts the process again with the same arguments.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(bin())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LOGFLEET_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn logfleet");
        self.child = Some(child);
    }

    /// SIGKILL, as an OOM kill or a node crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (SIGTERM, SIGINT), as kubelet or a terminal would.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run logfleet")
}

/// All lines matching `query`, oldest first, as JSON objects.
pub fn query_all(url: &str, query: &str, extra: &[&str]) -> Option<Vec<serde_json::Value>> {
    let mut args = vec![
        "query",
        "--aggregator",
        url,
        query,
        "--limit",
        "0",
        "--direction",
        "forward",
        "--output",
        "jsonl",
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("jsonl output"))
            .collect(),
    )
}

/// An aggregator on free ports with its data under `dir`.
pub fn aggregator(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let grpc = free_port();
    let http = free_port();
    let mut args: Vec<String> = [
        "aggregator",
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--grpc-addr",
        &format!("127.0.0.1:{grpc}"),
        "--http-addr",
        &format!("127.0.0.1:{http}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = Proc::start("aggregator", &args, dir);
    p.http = format!("127.0.0.1:{http}");
    let url = format!("http://127.0.0.1:{grpc}");
    wait_for("aggregator to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", grpc))
            .ok()
            .map(|_| ())
    });
    (p, url)
}

/// [`aggregator`], once `/readyz` says it is ready: over ClickHouse it
/// connects in the background and refuses pushes as UNAVAILABLE until
/// then, which a test that pushes at once must not take for an answer.
pub fn ready_aggregator(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let (p, url) = aggregator(dir, extra);
    wait_for(
        "the aggregator to be ready",
        Duration::from_secs(60),
        || http_get(&p.http, "/readyz").filter(|r| r.starts_with("HTTP/1.1 200")),
    );
    (p, url)
}

/// An agent for `node` tailing `root`, tuned for fast tests; a flag in
/// `extra` replaces the default of the same name.
pub fn agent(dir: &Path, node: &str, root: &Path, url: &str, extra: &[&str]) -> Proc {
    agent_with_env(dir, node, root, url, extra, &[])
}

/// [`agent`], with environment variables such as a rendered ConfigMap's.
pub fn agent_with_env(
    dir: &Path,
    node: &str,
    root: &Path,
    url: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Proc {
    let state = dir.join(format!("state-{node}")).display().to_string();
    let root = root.display().to_string();
    let defaults: [(&str, &str); 11] = [
        ("--node-name", node),
        ("--log-root", &root),
        ("--state-dir", &state),
        ("--aggregator", url),
        ("--batch-wait", "200ms"),
        ("--batch-size", "64KiB"),
        ("--partial-timeout", "1s"),
        ("--rotate-wait", "2s"),
        ("--poll-interval", "200ms"),
        ("--rescan-interval", "1s"),
        ("--http-addr", "127.0.0.1:0"),
    ];
    let mut args = vec!["agent".to_string()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::start_with_env(&format!("agent-{node}"), &args, env, dir)
}

/// The body of an HTTP GET on loopback.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// POSTs `body` with the given headers; the whole response as text.
pub fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The value of a Prometheus sample (first line starting with `name`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Counts occurrences of each key.
pub fn multiset<K: Ord>(items: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// Appends `text` to a file (creating it), as a container runtime writes.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
