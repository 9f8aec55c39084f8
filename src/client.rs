//! The user commands that talk to the aggregator: query, tail, agents.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use logfleet_proto::v1::query_client::QueryClient;
use logfleet_proto::v1::{Entry, ListAgentsRequest, QueryRequest, Stream, TailRequest};
use tokio_stream::StreamExt;

/// How to reach the aggregator.
pub struct ConnArgs {
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    /// A token already read (from the cluster), when no file is given.
    pub token: Option<String>,
    /// A CA already read (from the cluster), when no file is given.
    pub ca_pem: Option<Vec<u8>>,
}

type Client = QueryClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        logfleet_agent::ship::BearerToken,
    >,
>;

async fn connect(c: &ConnArgs) -> Result<Client> {
    let token = crate::read_token(&c.token_file)?.or_else(|| c.token.clone());
    let target = logfleet_agent::ship::Target {
        url: c.url.clone(),
        token: token.clone(),
        tls_ca: c.tls_ca.clone(),
        tls_ca_pem: c.tls_ca.is_none().then(|| c.ca_pem.clone()).flatten(),
        identity_token_file: None,
    };
    let channel = logfleet_agent::ship::channel(&target)?;
    let auth = logfleet_agent::ship::BearerToken::new(token.as_deref())?;
    Ok(QueryClient::with_interceptor(channel, auth).max_decoding_message_size(256 << 20))
}

/// Turns a gRPC status into one readable line.
fn status(url: &str, s: tonic::Status) -> anyhow::Error {
    if let Some(why) = logfleet_agent::ship::explain(&s) {
        return anyhow::anyhow!("{url}: {why}");
    }
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("shutting down") => {
            anyhow::anyhow!("aggregator at {url} is shutting down")
        }
        tonic::Code::Unavailable => {
            anyhow::anyhow!("aggregator at {url} is unreachable: {}", s.message())
        }
        tonic::Code::Unauthenticated => {
            anyhow::anyhow!("aggregator at {url} refused the token: {}", s.message())
        }
        tonic::Code::InvalidArgument => anyhow::anyhow!("{}", s.message()),
        code => anyhow::anyhow!("{}: {}", code.description(), s.message()),
    }
}

fn parse_time(s: &str) -> Result<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("bad time {s:?}: use RFC 3339, e.g. 2026-11-27T10:00:00Z"))?;
    t.timestamp_nanos_opt().context("time out of range")
}

/// The query's time range in ns (0: open).
pub fn time_range(
    since: Option<Duration>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(i64, i64)> {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let from = match (since, from) {
        (Some(d), _) => now - d.as_nanos().min(i64::MAX as u128) as i64,
        (None, Some(f)) => parse_time(f)?,
        (None, None) => 0,
    };
    let to = to.map(parse_time).transpose()?.unwrap_or(0);
    if to != 0 && from >= to {
        anyhow::bail!("the time range is empty: --from (or --since) must be before --to");
    }
    Ok((from, to))
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// One entry as a JSON object: the documented fields, plus `line_base64`
/// when the line is not valid UTF-8 (so no byte is lost) and the flags
/// when they are set.
pub fn entry_json(e: &Entry) -> serde_json::Value {
    let l = e.labels.clone().unwrap_or_default();
    let stream = match Stream::try_from(e.stream) {
        Ok(Stream::Stdout) => "stdout",
        Ok(Stream::Stderr) => "stderr",
        _ => "",
    };
    let mut v = serde_json::json!({
        "ts": rfc3339(e.ts_unix_nano),
        "node": e.node,
        "namespace": l.namespace,
        "pod": l.pod,
        "container": l.container,
        "stream": stream,
        "line": String::from_utf8_lossy(&e.line),
        "pod_uid": l.pod_uid,
        "restart": l.restart,
    });
    if std::str::from_utf8(&e.line).is_err() {
        v["line_base64"] = base64(&e.line).into();
    }
    if !l.extra.is_empty() && !e.piped {
        // Labels beyond the path's (Kubernetes metadata, Loki pushes).
        v["labels"] = l
            .extra
            .iter()
            .map(|x| (x.name.clone(), serde_json::Value::from(x.value.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if e.piped {
        // The query's pipeline stages gave the line these labels.
        v["labels"] = e
            .pipeline_labels
            .iter()
            .map(|l| (l.name.clone(), serde_json::Value::from(l.value.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
        if let Some(f) = &e.formatted {
            v["formatted"] = f.clone().into();
        }
    }
    for (k, set) in [
        ("unterminated", e.unterminated),
        ("cut", e.cut),
        ("unparsed", e.unparsed),
    ] {
        if set {
            v[k] = true.into();
        }
    }
    v
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn print(out: &mut impl Write, entries: &[Entry], jsonl: bool) -> Result<()> {
    for e in entries {
        if jsonl {
            serde_json::to_writer(&mut *out, &entry_json(e))?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(&e.line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Runs a query and prints the result; `reverse` prints it in the
/// opposite order (held whole: use it with a limit).
pub async fn query(c: &ConnArgs, req: QueryRequest, jsonl: bool, reverse: bool) -> Result<()> {
    if reverse && req.limit == 0 {
        anyhow::bail!("--reverse holds the whole result: give a --limit (or use --direction)");
    }
    let mut client = connect(c).await?;
    let mut stream = client
        .query(req)
        .await
        .map_err(|s| status(&c.url, s))?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut held = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| status(&c.url, s))?;
        if reverse {
            held.extend(msg.entries);
        } else {
            print(&mut out, &msg.entries, jsonl)?;
        }
    }
    held.reverse();
    print(&mut out, &held, jsonl)?;
    out.flush()?;
    Ok(())
}

/// Follows a query until interrupted.
pub async fn tail(c: &ConnArgs, query: String, jsonl: bool) -> Result<()> {
    let mut client = connect(c).await?;
    let mut stream = client
        .tail(TailRequest { query })
        .await
        .map_err(|s| status(&c.url, s))?
        .into_inner();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| status(&c.url, s))?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        print(&mut out, &msg.entries, jsonl)?;
        out.flush()?;
    }
    // A tail only ends when the aggregator ends it.
    anyhow::bail!("aggregator at {} ended the tail", c.url)
}

/// Every agent the aggregator knows.
async fn list_agents(c: &ConnArgs) -> Result<Vec<logfleet_proto::v1::AgentInfo>> {
    let mut client = connect(c).await?;
    let list = client
        .list_agents(ListAgentsRequest {})
        .await
        .map_err(|s| status(&c.url, s))?
        .into_inner();
    Ok(list.agents)
}

/// Each node's latest contact (heartbeat or push), ns since the epoch.
pub async fn last_contacts(c: &ConnArgs) -> Result<std::collections::BTreeMap<String, i64>> {
    Ok(list_agents(c)
        .await?
        .into_iter()
        .map(|a| (a.node, a.last_push_unix_nano.max(a.last_seen_unix_nano)))
        .collect())
}

/// RFC 3339, or `-` for "never" (0).
fn time_or_dash(ns: i64) -> String {
    if ns == 0 {
        "-".into()
    } else {
        rfc3339(ns)
    }
}

/// Lists agents.
pub async fn agents(c: &ConnArgs, jsonl: bool) -> Result<()> {
    let agents = list_agents(c).await?;
    let mut out = std::io::stdout().lock();
    if jsonl {
        for a in &agents {
            let opt = |ns: i64| (ns != 0).then(|| rfc3339(ns));
            let v = serde_json::json!({
                "node": a.node,
                "first_push": opt(a.first_push_unix_nano),
                "last_push": opt(a.last_push_unix_nano),
                "last_seen": opt(a.last_seen_unix_nano),
                "lines": a.lines,
                "bytes": a.bytes,
                "version": a.version,
                "files": a.files,
                "bytes_behind": a.bytes_behind,
                "last_error": a.last_error,
                "dead_letter_lines": a.dead_letter_lines,
            });
            writeln!(out, "{v}")?;
        }
    } else {
        writeln!(
            out,
            "{:<24} {:<32} {:<32} {:>12} {:>14} {:>6} {:>12}  LAST ERROR",
            "NODE", "LAST SEEN", "LAST PUSH", "LINES", "BYTES", "FILES", "BEHIND"
        )?;
        for a in &agents {
            writeln!(
                out,
                "{:<24} {:<32} {:<32} {:>12} {:>14} {:>6} {:>12}  {}",
                a.node,
                time_or_dash(a.last_seen_unix_nano),
                time_or_dash(a.last_push_unix_nano),
                a.lines,
                a.bytes,
                a.files,
                a.bytes_behind,
                if a.last_error.is_empty() {
                    "-"
                } else {
                    &a.last_error
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_keeps_nanoseconds_and_invalid_utf8() {
        let e = Entry {
            ts_unix_nano: 1_795_773_600_123_456_789,
            node: "n".into(),
            line: b"a\xffb".to_vec(),
            stream: Stream::Stderr as i32,
            ..Default::default()
        };
        let v = entry_json(&e);
        assert_eq!(v["ts"], "2026-11-27T10:00:00.123456789Z");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["line_base64"], "Yf9i");
        assert!(v.get("cut").is_none());
    }
}
