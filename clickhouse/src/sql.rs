//! The SQL the ClickHouse store sends: its schema, for the server's
//! version, and LogQL selectors and line filters as `WHERE` clauses.
//!
//! Pure: strings in, strings out. Tested here for their text and, in
//! `tests/clickhouse.rs`, against a real server.

use logfleet_store::query::{Filter, Label, Op, Query};

/// Schema version this code writes; recorded in `schema_migrations`.
/// 2: `lines` sorted by time within a container (tables made by version 1
/// keep their key: every query reads both alike).
pub const SCHEMA_VERSION: u32 = 2;

/// What the server supports, from its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `major.minor` of `SELECT version()`.
    pub version: (u32, u32),
    /// Column codecs (`CODEC(ZSTD(1))`, 19.1 and later).
    pub codecs: bool,
    /// Table TTL (19.6 and later).
    pub ttl: bool,
}

impl Features {
    /// Features of a server reporting `version` (`18.16.1`, `24.8.4.13`).
    pub fn of(version: &str) -> Features {
        let mut parts = version
            .trim()
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Features {
            version: v,
            codecs: v >= (19, 1),
            ttl: v >= (19, 6),
        }
    }
}

/// A string literal: single quotes, with `\` and `'` escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An identifier: back-quoted.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Columns of `lines`, in the order rows are written and read.
pub const COLUMNS: &str = "ts, node, namespace, pod, pod_uid, container, restart, \
    label_names, label_values, stream, file_id, offset, flags, line, received";

/// The statements that create (or leave as they are) the database and its
/// tables. All are `IF NOT EXISTS`: several aggregators may run them at
/// once. `retention_days`: a table TTL where the server has one (else
/// retention drops partitions).
pub fn schema(
    db_name: &str,
    f: Features,
    retention_days: Option<u32>,
    cluster: Option<&str>,
) -> Vec<String> {
    let db = ident(db_name);
    let line = if f.codecs {
        "line String CODEC(ZSTD(1))"
    } else {
        "line String"
    };
    let ttl = match (f.ttl, retention_days) {
        (true, Some(d)) => format!(" TTL day + INTERVAL {d} DAY"),
        _ => String::new(),
    };
    let on = cluster.map_or(String::new(), |c| format!(" ON CLUSTER {}", ident(c)));
    // In a cluster, `lines` and `agents` are Distributed tables over
    // replicated local ones: sharded by the line's file, so every copy of
    // a line lands in the same shard and folds there.
    let (lines, agents) = if cluster.is_some() {
        ("lines_local", "agents_local")
    } else {
        ("lines", "agents")
    };
    let engine = |table: &str, version: &str| {
        match cluster {
        Some(_) => format!(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db_name}/{table}', '{{replica}}'{})",
            if version.is_empty() { String::new() } else { format!(", {version}") }
        ),
        None => format!("ReplacingMergeTree({version})"),
    }
    };
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}{on}"),
        // Aggregators starting at once may each record the version (the
        // check and the insert are not atomic): the rows fold into one
        // when merged, and readers take `max(version)`.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations{on} (version UInt32, applied DateTime DEFAULT now()) \
             ENGINE = ReplacingMergeTree() ORDER BY version"
        ),
        // One row per stored line. The sorting key is the common query's
        // (namespace, pod, container, time: a time range within a pod reads
        // only its granules) and ends in the line's identity (node, file,
        // offset): ReplacingMergeTree folds a line sent twice (a retry, or
        // a range re-sent to another replica: the same line, the same
        // time) into one row when it merges, and queries collapse what is
        // not merged yet with `LIMIT 1 BY node, file_id, offset`. Lines of
        // one file keep their path labels, so the key is the line's
        // identity.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{lines}{on} (\
             ts Int64, day Date DEFAULT toDate(intDiv(ts, 1000000000)), \
             node String, namespace String, pod String, pod_uid String, container String, \
             restart UInt32, stream UInt8, label_names Array(String), label_values Array(String), \
             file_id UInt64, offset UInt64, flags UInt32, {line}, received Int64) \
             ENGINE = {} PARTITION BY day \
             ORDER BY (namespace, pod, container, ts, node, file_id, offset){ttl}",
            engine(lines, "")
        ),
        // The latest heartbeat of every agent, whichever replica took it.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{agents}{on} (node String, seen UInt64, version String, \
             files UInt64, bytes_behind UInt64, last_error String, dead_letter_lines UInt64) \
             ENGINE = {} ORDER BY node",
            engine(agents, "seen")
        ),
    ];
    if let Some(c) = cluster {
        let c = ident(c);
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {db}.lines{on} AS {db}.lines_local \
             ENGINE = Distributed({c}, {db}, lines_local, cityHash64(node, file_id))"
        ));
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {db}.agents{on} AS {db}.agents_local \
             ENGINE = Distributed({c}, {db}, agents_local, cityHash64(node))"
        ));
    }
    out.push(format!(
        "INSERT INTO {db}.schema_migrations (version) SELECT {SCHEMA_VERSION} \
         WHERE (SELECT count() FROM {db}.schema_migrations WHERE version = {SCHEMA_VERSION}) = 0"
    ));
    out
}

/// The column or expression holding a label's value, as text.
fn label_expr(l: &Label) -> String {
    match l {
        Label::Node => "node".into(),
        Label::Namespace => "namespace".into(),
        Label::Pod => "pod".into(),
        Label::PodUid => "pod_uid".into(),
        Label::Container => "container".into(),
        Label::Restart => "toString(restart)".into(),
        Label::Stream => "multiIf(stream = 1, 'stdout', stream = 2, 'stderr', '')".into(),
        // Index 0 (absent) gives '': a missing label is the empty value,
        // as in Loki and the embedded store.
        Label::Other(name) => format!("label_values[indexOf(label_names, {})]", quote(name)),
    }
}

fn op_sql(expr: &str, op: &Op) -> String {
    match op {
        Op::Eq(v) => format!("{expr} = {}", quote(v)),
        Op::Ne(v) => format!("{expr} != {}", quote(v)),
        // The compiled pattern is anchored (`^(?:...)$`), as matchers are.
        Op::Re(r) => format!("match({expr}, {})", quote(r.as_str())),
        Op::NotRe(r) => format!("NOT match({expr}, {})", quote(r.as_str())),
    }
}

fn filter_sql(f: &Filter) -> String {
    match f {
        Filter::Contains(x) => format!(
            "position(line, {}) > 0",
            quote(&String::from_utf8_lossy(x.needle()))
        ),
        Filter::NotContains(x) => format!(
            "position(line, {}) = 0",
            quote(&String::from_utf8_lossy(x.needle()))
        ),
        Filter::Matches(r) => format!("match(line, {})", quote(r.as_str())),
        Filter::NotMatches(r) => format!("NOT match(line, {})", quote(r.as_str())),
    }
}

/// Why a query cannot go to ClickHouse yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unsupported {
    /// Pipeline stages (`| json`, `| line_format`, ...).
    #[error("pipeline stages are not supported with the ClickHouse store yet")]
    Pipeline,
}

/// Time bounds, limit and order of a log query.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Inclusive lower bound, ns.
    pub from: Option<i64>,
    /// Exclusive upper bound, ns.
    pub to: Option<i64>,
    /// At most this many lines; 0: no limit.
    pub limit: u64,
    /// Newest first.
    pub backward: bool,
}

/// The lines of a log query that arrived (were inserted) at or after
/// `received`, oldest arrival first, each (node, file, offset) once, at
/// most `limit`; RowBinary with [`COLUMNS`].
pub fn arrived_since(
    db: &str,
    q: &Query,
    received: i64,
    limit: u64,
) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    conds.push(format!("received >= {received}"));
    Ok(format!(
        "SELECT {COLUMNS} FROM {}.lines WHERE {} \
         ORDER BY received, node, file_id, offset \
         LIMIT 1 BY node, file_id, offset LIMIT {} FORMAT RowBinary",
        ident(db),
        conds.join(" AND "),
        limit.max(1)
    ))
}

/// The `WHERE` conditions of a log query's selector and line filters.
fn conditions(q: &Query) -> Result<Vec<String>, Unsupported> {
    if !q.pipeline.is_empty() || q.unwrap.is_some() {
        return Err(Unsupported::Pipeline);
    }
    let mut conds: Vec<String> = q
        .matchers
        .iter()
        .map(|m| op_sql(&label_expr(&m.label), &m.op))
        .collect();
    conds.extend(q.filters.iter().map(filter_sql));
    conds.push("1".into());
    Ok(conds)
}

/// Label names of the lines `q` selects in `[from, to)`: the extra labels'
/// names, as a one-column RowBinary of strings.
pub fn label_names(db: &str, q: &Query, from: i64, to: i64) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    conds.push(format!("ts >= {from} AND ts < {to}"));
    Ok(format!(
        "SELECT DISTINCT arrayJoin(label_names) FROM {}.lines WHERE {} FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// Values of label `name` on the lines `q` selects in `[from, to)`, the
/// empty value left out; a one-column RowBinary of strings.
pub fn label_values(
    db: &str,
    q: &Query,
    name: &str,
    from: i64,
    to: i64,
) -> Result<String, Unsupported> {
    let label = Label::from_name(name);
    let expr = label_expr(&label);
    let mut conds = conditions(q)?;
    conds.push(format!("ts >= {from} AND ts < {to}"));
    Ok(format!(
        "SELECT DISTINCT {expr} AS v FROM {}.lines WHERE {} AND v != '' ORDER BY v FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// The `SELECT` of a log query: the lines the selector and the line
/// filters pass, each (node, file, offset) once, in time order, as
/// RowBinary with [`COLUMNS`].
pub fn select(db: &str, q: &Query, w: Window) -> Result<String, Unsupported> {
    select_after(db, q, w, None)
}

/// Where a page of results ended: the next page starts after this line in
/// the query's order (timestamp, then node, file, offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp.
    pub ts: i64,
    /// Node.
    pub node: String,
    /// File.
    pub file_id: u64,
    /// Offset.
    pub offset: u64,
}

/// [`select`] from after `after`, for paging.
pub fn select_after(
    db: &str,
    q: &Query,
    w: Window,
    after: Option<&Cursor>,
) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    if let Some(c) = after {
        // Lexicographic (ts, node, file_id, offset), past the cursor in
        // the query's direction; written out, as 18.16 compares no tuples.
        let (gt, node) = (if w.backward { "<" } else { ">" }, quote(&c.node));
        conds.push(format!(
            "(ts {gt} {ts} OR (ts = {ts} AND (node {gt} {node} OR (node = {node} AND \
             (file_id {gt} {f} OR (file_id = {f} AND offset {gt} {o}))))))",
            ts = c.ts,
            f = c.file_id,
            o = c.offset
        ));
    }
    if let Some(from) = w.from {
        conds.push(format!("ts >= {from}"));
    }
    if let Some(to) = w.to {
        conds.push(format!("ts < {to}"));
    }
    let dir = if w.backward { "DESC" } else { "ASC" };
    let limit = if w.limit > 0 {
        format!(" LIMIT {}", w.limit)
    } else {
        String::new()
    };
    Ok(format!(
        "SELECT {COLUMNS} FROM {}.lines WHERE {} \
         ORDER BY ts {dir}, node {dir}, file_id {dir}, offset {dir} \
         LIMIT 1 BY node, file_id, offset{limit} FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// The columns that make a line's stream (its file's labels; the stream
/// label is per line and left out, as in the embedded store's `series`).
const STREAM_COLUMNS: &str =
    "node, namespace, pod, pod_uid, container, restart, label_names, label_values";

/// The streams with lines selected by `q`'s matchers in `[from, to)`:
/// RowBinary of [`STREAM_COLUMNS`] (Loki's `series`).
pub fn series(db: &str, q: &Query, from: i64, to: i64) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    conds.push(format!("ts >= {from} AND ts < {to}"));
    Ok(format!(
        "SELECT DISTINCT {STREAM_COLUMNS} FROM {}.lines WHERE {} FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// Lines and bytes of text of `q`'s selector and line filters counted in
/// ClickHouse, per stream and bucket of `width` ns from `from` (see
/// `logfleet_store::evaluate::Buckets`), each line once, over `[from, to)`: RowBinary of
/// [`STREAM_COLUMNS`], stream (UInt8), bucket (Int64), lines and bytes
/// (UInt64). Only the counts cross the wire. `bytes` false: the text is
/// not read at all.
pub fn buckets(
    db: &str,
    q: &Query,
    from: i64,
    to: i64,
    width: i64,
    bytes: bool,
) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    conds.push(format!("ts >= {from} AND ts < {to}"));
    let len = if bytes { "length(line)" } else { "toUInt64(0)" };
    Ok(format!(
        "SELECT {STREAM_COLUMNS}, stream, intDiv(ts - {from}, {width}) AS bucket, count(), sum(len) FROM \
         (SELECT {STREAM_COLUMNS}, stream, ts, {len} AS len, file_id, offset FROM {}.lines WHERE {} \
         LIMIT 1 BY node, file_id, offset) \
         GROUP BY {STREAM_COLUMNS}, stream, bucket FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// What a query would read in `[from, to)`, each line once: lines, bytes
/// of text, streams and stream-days (ClickHouse has no chunks: a stream's
/// lines of one day are what comes closest), as RowBinary UInt64 x 4
/// (Loki's `index/stats`).
pub fn index_stats(db: &str, q: &Query, from: i64, to: i64) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    conds.push(format!("ts >= {from} AND ts < {to}"));
    Ok(format!(
        "SELECT count(), sum(length(line)), uniqExact({STREAM_COLUMNS}),          uniqExact({STREAM_COLUMNS}, day) FROM          (SELECT {STREAM_COLUMNS}, day, line FROM {}.lines WHERE {}          LIMIT 1 BY node, file_id, offset) FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// The lines of `q`'s selector and line filters in `[from, to)`, each
/// once, in no order (nothing to sort: the reader takes them as they
/// stream); RowBinary with [`COLUMNS`].
pub fn select_unordered(db: &str, q: &Query, from: i64, to: i64) -> Result<String, Unsupported> {
    let mut conds = conditions(q)?;
    conds.push(format!("ts >= {from} AND ts < {to}"));
    Ok(format!(
        "SELECT {COLUMNS} FROM {}.lines WHERE {} LIMIT 1 BY node, file_id, offset FORMAT RowBinary",
        ident(db),
        conds.join(" AND ")
    ))
}

/// Columns of `agents`, in the order heartbeats are written and read.
pub const AGENT_COLUMNS: &str =
    "node, seen, version, files, bytes_behind, last_error, dead_letter_lines";

/// Every agent's latest heartbeat, as RowBinary with [`AGENT_COLUMNS`].
pub fn agents(db: &str) -> String {
    format!(
        "SELECT {AGENT_COLUMNS} FROM {}.agents ORDER BY node, seen DESC LIMIT 1 BY node FORMAT RowBinary",
        ident(db)
    )
}

/// Per node: lines, bytes of text, first and last time received, each
/// line counted once; RowBinary (String, UInt64, UInt64, Int64, Int64).
pub fn agent_lines(db: &str) -> String {
    format!(
        "SELECT node, count(), sum(length(line)), min(received), max(received) FROM \
         (SELECT node, line, received FROM {}.lines LIMIT 1 BY node, file_id, offset) \
         GROUP BY node FORMAT RowBinary",
        ident(db)
    )
}

/// The days holding lines older than `days` whole days (RowBinary
/// strings, `YYYY-MM-DD`): the partitions retention drops. Reads only the
/// partition column of old partitions (the partition key prunes the rest).
pub fn expired_days(db: &str, days: u32) -> String {
    format!(
        "SELECT DISTINCT toString(day) FROM {}.lines WHERE day < today() - {days} FORMAT RowBinary",
        ident(db)
    )
}

/// Drops one day of lines (`YYYY-MM-DD`), on every server of `cluster`:
/// a partition, so no rewrite. What retention is on servers without table
/// TTL (Debian's 18.16), and the same on the others, where it also applies
/// a retention that changed after the table was created.
pub fn drop_day(db: &str, cluster: Option<&str>, day: &str) -> String {
    let (table, on) = match cluster {
        Some(c) => ("lines_local", format!(" ON CLUSTER {}", ident(c))),
        None => ("lines", String::new()),
    };
    format!(
        "ALTER TABLE {}.{table}{on} DROP PARTITION {}",
        ident(db),
        quote(day)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_drops_whole_days_on_every_server() {
        assert_eq!(
            expired_days("logs", 7),
            "SELECT DISTINCT toString(day) FROM `logs`.lines WHERE day < today() - 7 FORMAT RowBinary"
        );
        assert_eq!(
            drop_day("logs", None, "2026-11-20"),
            "ALTER TABLE `logs`.lines DROP PARTITION '2026-11-20'"
        );
        assert_eq!(
            drop_day("logs", Some("c1"), "2026-11-20"),
            "ALTER TABLE `logs`.lines_local ON CLUSTER `c1` DROP PARTITION '2026-11-20'"
        );
        // Whatever the server answered is quoted, never spliced.
        assert!(drop_day("logs", None, "x' OR 1").ends_with("PARTITION 'x\\' OR 1'"));
    }

    #[test]
    fn versions_decide_codecs_and_ttl() {
        let old = Features::of("18.16.1");
        assert_eq!((old.version, old.codecs, old.ttl), ((18, 16), false, false));
        let new = Features::of("24.8.4.13");
        assert!(new.codecs && new.ttl);
        let s = schema("logs", old, Some(7), None).join("\n");
        assert!(!s.contains("CODEC") && !s.contains("TTL"), "{s}");
        let s = schema("logs", new, Some(7), None).join("\n");
        assert!(
            s.contains("CODEC(ZSTD(1))") && s.contains("TTL day + INTERVAL 7 DAY"),
            "{s}"
        );
        assert!(schema("logs", new, None, None)
            .iter()
            .all(|st| st.contains("IF NOT EXISTS") || st.starts_with("INSERT")));
        let c = schema("logs", new, None, Some("logs")).join("\n");
        assert!(
            c.contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/logs/lines_local', '{replica}')"),
            "{c}"
        );
        assert!(
            c.contains(
                "ENGINE = Distributed(`logs`, `logs`, lines_local, cityHash64(node, file_id))"
            ),
            "{c}"
        );
        assert!(
            c.contains("CREATE DATABASE IF NOT EXISTS `logs` ON CLUSTER `logs`"),
            "{c}"
        );
    }

    #[test]
    fn quoting_keeps_literals_literal() {
        assert_eq!(quote(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(ident("my`db"), r"`my\`db`");
    }

    #[test]
    fn log_queries_become_where_clauses() {
        let q = logfleet_store::query::parse(
            r#"{namespace="shop", pod=~"check.*", app!="x", stream="stderr"} |= "ERR" != "ok'" |~ "5\\d\\d""#,
        )
        .unwrap();
        let s = select(
            "logs",
            &q,
            Window {
                from: Some(10),
                to: Some(20),
                limit: 100,
                backward: true,
            },
        )
        .unwrap();
        for part in [
            "namespace = 'shop'",
            "match(pod, '^(?:check.*)$')",
            "label_values[indexOf(label_names, 'app')] != 'x'",
            "multiIf(stream = 1, 'stdout', stream = 2, 'stderr', '') = 'stderr'",
            "position(line, 'ERR') > 0",
            r"position(line, 'ok\'') = 0",
            r"match(line, '5\\d\\d')",
            "ts >= 10 AND ts < 20",
            "ORDER BY ts DESC",
            "LIMIT 1 BY node, file_id, offset LIMIT 100 FORMAT RowBinary",
        ] {
            assert!(s.contains(part), "{part} not in {s}");
        }
        let piped = logfleet_store::query::parse(r#"{pod="p"} | json"#).unwrap();
        assert_eq!(
            select(
                "logs",
                &piped,
                Window {
                    from: None,
                    to: None,
                    limit: 0,
                    backward: false
                }
            ),
            Err(Unsupported::Pipeline)
        );
    }
}
