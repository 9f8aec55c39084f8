//! The built-in web view in a real browser: headless Chromium (Debian's
//! `chromium`; installed here when missing and running as root, as on CI)
//! driven over the DevTools protocol (`--remote-debugging-pipe`) through a
//! query of 1,200 lines, an expanded line, the live tail and the agents
//! page, against a real aggregator fed by a real agent. Screenshots go to
//! `<target>/tmp/web_view/` (light and dark).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "web-view-read-token";

/// Chromium's binary: `LOGFLEET_CHROMIUM`, or `chromium` on the PATH
/// (installed from Debian when missing and we are root).
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("LOGFLEET_CHROMIUM") {
        return p.into();
    }
    let found = || {
        Command::new("sh")
            .args(["-c", "command -v chromium || command -v chromium-browser"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let Some(p) = found() {
        return p;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "installing Debian's chromium failed");
    }
    found().expect("this test needs Chromium: apt-get install chromium (or set LOGFLEET_CHROMIUM)")
}

/// A browser and one page, over the DevTools protocol on a pipe pair.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    session: String,
    next: u64,
}

impl Browser {
    fn launch(profile: &Path) -> Browser {
        let (cmd_r, cmd_w) = pipe();
        let (resp_r, resp_w) = pipe();
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let (cr, rw) = (
            std::os::fd::AsRawFd::as_raw_fd(&cmd_r),
            std::os::fd::AsRawFd::as_raw_fd(&resp_w),
        );
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(cr, 3) < 0 || libc::dup2(rw, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop(cmd_r);
        drop(resp_w);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(std::fs::File::from(resp_r));
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_w),
            from: rx,
            session: String::new(),
            next: 0,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().expect("target id").to_owned();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends a command (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"));
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates JavaScript in the page: its value, or the exception.
    fn try_eval(&mut self, js: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Evaluates JavaScript in the page and returns its value.
    fn eval(&mut self, js: &str) -> Value {
        self.try_eval(js).unwrap_or_else(|e| panic!("{js}: {e}"))
    }

    /// Polls `js` until it is truthy.
    fn wait_true(&mut self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A page still loading throws (its elements are not there yet):
            // that is "not yet" too.
            let v = self.try_eval(js).unwrap_or(Value::Null);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("png data"))
            .expect("base64");
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe writes.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "pipe");
    // SAFETY: pipe just returned these open descriptors; we own them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap()
}

fn cri(ts: i64, stream: &str, text: &str) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(ts)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    format!("{t} {stream} F {text}\n")
}

/// Lines the aggregator holds for `{pod="web"}`, through the Loki API.
fn stored(http: &str) -> usize {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return 0;
    };
    let q = "query=%7Bpod%3D%22web%22%7D&limit=5000&since=1h";
    let _ = write!(
        s,
        "GET /loki/api/v1/query_range?{q} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.matches("\"web line ").count() + out.matches("\"tail line ").count()
}

#[test]
fn query_tail_and_agents_in_a_browser() {
    in_a_browser(&[], "embedded");
}

/// The same page over the ClickHouse store: it reads only the Loki API and
/// the agents API, which both stores serve.
#[test]
fn the_same_over_clickhouse() {
    let ch = logfleet_kubesim::clickhouse::Server::start().unwrap();
    in_a_browser(
        &["--store", "clickhouse", "--clickhouse-url", &ch.url()],
        "clickhouse",
    );
}

fn in_a_browser(store: &[&str], name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let token_arg = token_file.display().to_string();
    let mut args = vec!["--token-file", token_arg.as_str()];
    args.extend_from_slice(store);
    let (_agg, url) = aggregator(tmp.path(), &args);
    let http = _agg.http.clone();
    let root = tmp.path().join("pods");
    let dir = root.join("shop_web_uid-web").join("app");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("0.log");
    // 1,200 lines over the last ten minutes; every tenth on stderr.
    let t0 = now_ns() - 600 * 1_000_000_000;
    let mut text = String::new();
    for i in 0..1200i64 {
        let stream = if i % 10 == 0 { "stderr" } else { "stdout" };
        text.push_str(&cri(
            t0 + i * 500_000_000,
            stream,
            &format!("web line {i:04} <b>not markup</b>"),
        ));
    }
    append(&log, &text);
    let _agent = agent(
        tmp.path(),
        "node-web",
        &root,
        &url,
        &["--token-file", &token_arg],
    );
    wait_for(
        "the agent to ship 1,200 lines",
        Duration::from_secs(60),
        || (stored(&http) == 1200).then_some(()),
    );

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("web_view")
        .join(name);
    std::fs::create_dir_all(&shots).unwrap();
    let mut b = Browser::launch(&tmp.path().join("profile"));
    let page = format!("http://{http}/#token={TOKEN}&q=%7Bpod%3D%22web%22%7D&range=1h&limit=1000");
    b.call("Page.navigate", json!({"url": page}));
    let rows = b.wait_true(
        "1,000 rows",
        "document.querySelectorAll('#lines li').length === 1000 && document.querySelectorAll('#lines li').length",
    );
    assert_eq!(rows, json!(1000));
    // Newest first; the line is text, never markup.
    let first = b.eval("document.querySelector('#lines li .text').textContent");
    assert_eq!(first, json!("web line 1199 <b>not markup</b>"));
    assert_eq!(
        b.eval("document.querySelectorAll('#lines b').length"),
        json!(0)
    );
    let status = b.eval("document.getElementById('status').textContent");
    assert!(
        status.as_str().unwrap().starts_with("1000 lines"),
        "{status}"
    );
    // The volume histogram counts all 1,200 (the limit is only for rows).
    let volume = b.wait_true(
        "the volume histogram",
        "Array.from(document.querySelectorAll('#volume rect title')).map(t => Number(t.textContent.split(': ')[1].split(' ')[0])).reduce((a, b) => a + b, 0)",
    );
    assert_eq!(volume, json!(1200));
    // The token left the URL.
    assert_eq!(b.eval("location.hash.includes('token')"), json!(false));
    // stderr lines are marked.
    assert_eq!(
        b.eval("document.querySelectorAll('#lines li.stderr').length"),
        json!(100)
    );
    // Expand a line: its labels.
    b.eval("document.querySelector('#lines li').click()");
    let details = b.eval("document.querySelector('#lines li .details').textContent");
    let details = details.as_str().unwrap();
    assert!(
        details.contains("pod=\"web\"") && details.contains("node=\"node-web\""),
        "{details}"
    );
    b.screenshot(&shots.join("query.png"));
    b.call(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    );
    let bg = b.eval("getComputedStyle(document.body).backgroundColor");
    assert_eq!(bg, json!("rgb(17, 20, 24)"), "dark theme");
    b.screenshot(&shots.join("query-dark.png"));
    b.call(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "light"}]}),
    );

    // Live tail: `t` starts it; new lines appear on top.
    b.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 't'}))");
    b.wait_true(
        "live mode",
        "document.getElementById('live').getAttribute('aria-pressed') === 'true'",
    );
    let now = now_ns();
    let mut more = String::new();
    for i in 0..5i64 {
        more.push_str(&cri(now + i * 1000, "stdout", &format!("tail line {i}")));
    }
    append(&log, &more);
    b.wait_true(
        "the tailed lines on top",
        "document.querySelector('#lines li .text').textContent === 'tail line 4'",
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#lines li').length"),
        json!(1005)
    );
    // Another container of the pod writes at the very instant of the
    // newest line shown, and its line arrives later: it is shown too, and
    // nothing shown before comes again.
    let sidecar = root.join("shop_web_uid-web").join("sidecar");
    std::fs::create_dir_all(&sidecar).unwrap();
    append(
        &sidecar.join("0.log"),
        &cri(now + 4 * 1000, "stdout", "sidecar at the same instant"),
    );
    b.wait_true(
        "the same-instant line of another stream",
        "Array.from(document.querySelectorAll('#lines li .text')).some(t => t.textContent === 'sidecar at the same instant')",
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#lines li').length"),
        json!(1006)
    );
    b.screenshot(&shots.join("tail.png"));
    b.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 't'}))");

    // Agents page: `a`.
    b.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'a'}))");
    let node = b.wait_true(
        "the agents table",
        "document.querySelector('#agents-table tbody td')?.textContent",
    );
    assert_eq!(node, json!("node-web"));
    let lines = b.eval(
        "document.querySelector('#agents-table tbody tr').children[3].textContent.replace(/\\D/g, '')",
    );
    assert_eq!(lines, json!("1206"));
    assert_eq!(
        b.eval("document.getElementById('logs').hidden"),
        json!(true)
    );
    b.screenshot(&shots.join("agents.png"));

    // A wrong token is said, not silently empty. (about:blank first: a
    // change of the fragment alone would not load the page again.)
    b.call("Page.navigate", json!({"url": "about:blank"}));
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{http}/#token=wrong&q=%7Bpod%3D%22web%22%7D")}),
    );
    let err = b.wait_true(
        "the error",
        "document.getElementById('status').classList.contains('error') && document.getElementById('status').textContent",
    );
    assert!(err.as_str().unwrap().contains("401"), "{err}");
}
