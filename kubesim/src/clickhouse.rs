//! A ClickHouse server of its own for tests, benchmarks and the demo:
//! Debian's `clickhouse-server` (installed when missing and running as
//! root, as CI does) with a configuration in a temporary directory, on
//! free loopback ports; and Debian's ZooKeeper for replicated tables. They
//! are the real servers, not stand-ins; this only starts them.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Debian's `clickhouse-server`, installed when missing and root.
pub fn server_binary() -> io::Result<PathBuf> {
    crate::tools::ensure("clickhouse-server", "clickhouse-server").map_err(other)?;
    let out = Command::new("sh")
        .args(["-c", "command -v clickhouse-server"])
        .output()?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `port` on loopback accepts connections.
fn wait_listening(port: u16, what: &str, log: Option<&Path>) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let detail = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            return Err(other(format!(
                "{what} did not listen within 60 s: {detail}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A running ClickHouse server in a temporary directory (stopped on drop).
pub struct Server {
    child: Option<Child>,
    dir: PathBuf,
    http: u16,
    _tmp: tempfile::TempDir,
}

impl Server {
    /// Starts a server.
    pub fn start() -> io::Result<Server> {
        Server::start_with(free_port()?, free_port()?, "")
    }

    /// Starts `n` servers that form the one-shard cluster `logs`, each a
    /// replica (macros `{shard}` = 01, `{replica}` = r1, r2, ...), with
    /// ZooKeeper at `zookeeper` (port on loopback).
    pub fn cluster(n: usize, zookeeper: u16) -> io::Result<Vec<Server>> {
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<io::Result<Vec<(u16, u16)>>>()?;
        let replicas: String = ports
            .iter()
            .map(|(_, tcp)| format!("<replica><host>127.0.0.1</host><port>{tcp}</port></replica>"))
            .collect();
        ports
            .iter()
            .enumerate()
            .map(|(i, (http, tcp))| {
                let extra = format!(
                    "<zookeeper><node><host>127.0.0.1</host><port>{zookeeper}</port></node></zookeeper>\n\
                     <remote_servers><logs><shard><internal_replication>true</internal_replication>{replicas}</shard></logs></remote_servers>\n\
                     <macros><shard>01</shard><replica>r{}</replica></macros>\n\
                     <interserver_http_port>{}</interserver_http_port><interserver_http_host>127.0.0.1</interserver_http_host>\n\
                     <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n",
                    i + 1,
                    free_port()?
                );
                Server::start_with(*http, *tcp, &extra)
            })
            .collect()
    }

    fn start_with(http: u16, tcp: u16, extra: &str) -> io::Result<Server> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let users = ["/etc/clickhouse-server/users.xml"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        // The package's users.xml appears with the package.
        let users = match users {
            Some(u) => u,
            None => {
                server_binary()?;
                "/etc/clickhouse-server/users.xml"
            }
        };
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n\
                 <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/err.log</errorlog></logger>\n\
                 <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port><listen_host>127.0.0.1</listen_host>\n\
                 <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/files/</user_files_path>\n\
                 <users_config>{users}</users_config><default_profile>default</default_profile>\n\
                 <default_database>default</default_database><mark_cache_size>5368709</mark_cache_size>\n\
                 {extra}</yandex>\n",
                d = dir.display()
            ),
        )?;
        let mut s = Server {
            child: None,
            dir,
            http,
            _tmp: tmp,
        };
        s.run()?;
        Ok(s)
    }

    /// Starts the server process again (after [`Server::stop`]), on the same
    /// ports and data.
    pub fn run(&mut self) -> io::Result<()> {
        let child = Command::new(server_binary()?)
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        wait_listening(
            self.http,
            "clickhouse-server",
            Some(&self.dir.join("err.log")),
        )
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the server wrote to its error log, and whether its process
    /// still runs: for a test that gives up on it to say why.
    pub fn diagnosis(&mut self) -> String {
        let running = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => "running".to_owned(),
            Some(Ok(Some(status))) => format!("exited: {status}"),
            Some(Err(e)) => format!("unknown: {e}"),
            None => "stopped".to_owned(),
        };
        let log = std::fs::read_to_string(self.dir.join("err.log")).unwrap_or_default();
        // The end says what happened last.
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "process {running}; err.log (last 40 lines):\n{}",
            tail.join("\n")
        )
    }

    /// The HTTP interface's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// A plain-text query over HTTP, for checks outside the store's code:
    /// the first line of the answer; an error when ClickHouse refuses it.
    pub fn sql(&self, q: &str) -> io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http))?;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{q}",
            q.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        if !out.starts_with("HTTP/1.1 200") {
            return Err(other(format!("{q}: {out}")));
        }
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // Chunked: the value is the line after the first chunk size.
        Ok(body.lines().nth(1).unwrap_or("").trim().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's ZooKeeper, standalone, in a temporary directory (stopped on
/// drop): what replicated ClickHouse tables coordinate through.
pub struct ZooKeeper {
    child: Child,
    /// Its client port on loopback.
    pub port: u16,
    _tmp: tempfile::TempDir,
}

impl ZooKeeper {
    /// Starts it, installing Debian's `zookeeper` (and a Java runtime) when
    /// missing and root.
    pub fn start() -> io::Result<ZooKeeper> {
        crate::tools::ensure("java", "default-jre-headless").map_err(other)?;
        if !Path::new("/usr/share/java/zookeeper.jar").exists() {
            crate::tools::ensure("zooinspector", "zookeeper").map_err(other)?;
        }
        let tmp = tempfile::tempdir()?;
        let port = free_port()?;
        let cfg = tmp.path().join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=2000\ndataDir={}\nclientPort={port}\nadmin.enableServer=false\n",
                tmp.path().display()
            ),
        )?;
        let mut child = Command::new("java")
            .args([
                "-cp",
                "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/*",
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(&cfg)
            .current_dir(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        if let Err(e) = wait_listening(port, "ZooKeeper", None) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(ZooKeeper {
            child,
            port,
            _tmp: tmp,
        })
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
