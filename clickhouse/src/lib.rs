//! ClickHouse as the store (issue 12): schema, exactly-once inserts, log
//! and metric queries and retention over ClickHouse's HTTP interface, for
//! the Debian package's 18.16 as for current releases, on one server or a
//! cluster; [`backend`] is the aggregator's store interface
//! ([`logfleet_store::Backend`]) over it.
//!
//! Exactly-once: every line is a row keyed by its identity (node, file,
//! offset) in a ReplacingMergeTree, so a re-sent range (an agent's retry,
//! or the same range pushed to another aggregator replica) folds into one
//! row when ClickHouse merges, and every query collapses what is not
//! merged yet (`LIMIT 1 BY node, file_id, offset`). Nothing is kept in the
//! aggregator: replicas need no shared state. The cost: duplicates take
//! disk until merged, and queries sort by the key.
//!
//! [`Writer`] batches pushes from many agents into few inserts (what
//! ClickHouse wants), with bounded memory, and answers each push only after
//! ClickHouse confirmed the insert holding it.
//!
//! Not yet here: pipeline stages (parsers, label filters, `unwrap`) in
//! SQL: they run in the aggregator over pages of lines.
//! See docs/ARCHITECTURE.md, "Known gaps".

pub mod backend;
pub mod rowbinary;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use logfleet_proto::v1::{Entry, FileLabels, Label, LineBatch, PushRequest, Stream};
use logfleet_proto::Limits;
use tokio::sync::{mpsc, oneshot, Semaphore};

use logfleet_store::query::Query;

/// Where the store is.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP interface, `http://host:8123`.
    pub url: String,
    /// Database (created when missing).
    pub database: String,
    /// User; none: ClickHouse's default user.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Whole days kept before today: older days are dropped
    /// ([`ClickHouse::drop_expired`]), and a table TTL says the same where
    /// the server has one.
    pub retention_days: Option<u32>,
    /// A cluster (`remote_servers`) to create the schema on: replicated
    /// tables under Distributed ones; inserts wait for the shards.
    pub cluster: Option<String>,
}

/// A failure talking to ClickHouse.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The URL is not an `http://host:port` address.
    #[error("ClickHouse URL {0:?} is not http://host:port")]
    Url(String),
    /// The server could not be reached.
    #[error("ClickHouse at {url} unreachable: {message}")]
    Unreachable {
        /// The server.
        url: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error.
    #[error("ClickHouse refused ({status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// ClickHouse's message (first line).
        message: String,
    },
    /// A reply did not decode.
    #[error(transparent)]
    Malformed(#[from] rowbinary::Malformed),
    /// The query cannot run on ClickHouse yet.
    #[error(transparent)]
    Unsupported(#[from] sql::Unsupported),
    /// A push was invalid.
    #[error(transparent)]
    Push(#[from] logfleet_store::push::Invalid),
    /// A push's payload did not decode.
    #[error(transparent)]
    Codec(#[from] logfleet_proto::CodecError),
    /// The writer stopped.
    #[error("the ClickHouse writer stopped")]
    Closed,
    /// The insert holding this push failed (shared by every push in it).
    #[error(transparent)]
    Insert(Arc<ClickHouseError>),
}

impl ClickHouseError {
    /// Whether ClickHouse is away or refusing (retrying may help), rather
    /// than the push or the query being wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClickHouseError::Unreachable { .. }
            | ClickHouseError::Server { .. }
            | ClickHouseError::Closed => true,
            ClickHouseError::Insert(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// How the message of a request that got no response starts.
const NOT_SENT: &str = "no response: ";

/// A connection to a ClickHouse server whose schema is in place.
#[derive(Clone)]
pub struct ClickHouse {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    cfg: Config,
    features: sql::Features,
}

impl ClickHouse {
    /// Connects, reads the server's version and creates or migrates the
    /// schema (idempotent: safe with several aggregators starting at once).
    pub async fn connect(cfg: Config) -> Result<ClickHouse, ClickHouseError> {
        if !cfg.url.starts_with("http://") {
            return Err(ClickHouseError::Url(cfg.url));
        }
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        // Idle connections are dropped before ClickHouse drops them (its
        // keep_alive_timeout is 3 s): one reused as the server closes it
        // fails the request.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(http);
        let mut ch = ClickHouse {
            client,
            cfg,
            features: sql::Features::of(""),
        };
        let version = ch.post("SELECT version()", Bytes::new()).await?;
        ch.features = sql::Features::of(&String::from_utf8_lossy(&version));
        for stmt in sql::schema(
            &ch.cfg.database,
            ch.features,
            ch.cfg.retention_days,
            ch.cfg.cluster.as_deref(),
        ) {
            ch.post(&stmt, Bytes::new()).await?;
        }
        tracing::info!(url = %ch.cfg.url, version = %String::from_utf8_lossy(&version).trim(), "ClickHouse store ready");
        Ok(ch)
    }

    /// What the server supports.
    pub fn features(&self) -> sql::Features {
        self.features
    }

    /// Runs `query` with `body` (the data of an INSERT) and returns the
    /// reply's body. A request that could not be sent (the connection
    /// refused or closed under it) is tried twice more: every statement
    /// here may run twice (schema `IF NOT EXISTS`, inserts folded by their
    /// key, partition drops), so a retry costs nothing but time.
    async fn post(&self, query: &str, body: Bytes) -> Result<Bytes, ClickHouseError> {
        let mut delay = Duration::from_millis(100);
        for _ in 0..2 {
            match self.post_once(query, body.clone()).await {
                Err(ClickHouseError::Unreachable { message, .. })
                    if message.starts_with(NOT_SENT) =>
                {
                    tracing::debug!(%message, "ClickHouse request not sent; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                other => return other,
            }
        }
        self.post_once(query, body).await
    }

    /// Sends `query` with `body`; the response once its head arrived (an
    /// error status is read and returned as [`ClickHouseError::Server`]).
    async fn send(
        &self,
        query: &str,
        body: Bytes,
    ) -> Result<::http::Response<hyper::body::Incoming>, ClickHouseError> {
        let q = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("query", query);
            if self.cfg.cluster.is_some() {
                // A Distributed insert is acknowledged once the shards have
                // it, not when it is queued on this server.
                q.append_pair("insert_distributed_sync", "1");
            }
            q.finish()
        };
        let uri = format!("{}/?{q}", self.cfg.url.trim_end_matches('/'));
        let mut req = ::http::Request::post(uri);
        if let Some(user) = &self.cfg.user {
            let pw = self.cfg.password.as_deref().unwrap_or("");
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            req = req.header("authorization", format!("Basic {token}"));
        }
        // 18.16 refuses a POST without a length, which hyper leaves out
        // for an empty body.
        let req = req
            .header("content-length", body.len())
            .body(Full::new(body))
            .map_err(|_| ClickHouseError::Url(self.cfg.url.clone()))?;
        let unreachable = |e: &dyn std::fmt::Display| ClickHouseError::Unreachable {
            url: self.cfg.url.clone(),
            message: e.to_string(),
        };
        let resp = tokio::time::timeout(Duration::from_secs(60), self.client.request(req))
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&format!("{NOT_SENT}{e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            return Err(ClickHouseError::Server {
                status: status.as_u16(),
                message: text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(500)
                    .collect(),
            });
        }
        Ok(resp)
    }

    async fn post_once(&self, query: &str, body: Bytes) -> Result<Bytes, ClickHouseError> {
        let resp = self.send(query, body).await?;
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| ClickHouseError::Unreachable {
                url: self.cfg.url.clone(),
                message: e.to_string(),
            })
    }

    /// Runs a `SELECT` of [`sql::COLUMNS`] and hands each row to `f` as it
    /// arrives (decoded frame by frame, never held whole), until `f`
    /// returns false. For reads in no order: one statement, no paging.
    pub async fn stream_stored(
        &self,
        statement: &str,
        f: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), ClickHouseError> {
        let mut body = self.send(statement, Bytes::new()).await?.into_body();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = body.frame().await;
            let done = frame.is_none();
            if let Some(frame) = frame {
                let frame = frame.map_err(|e| ClickHouseError::Unreachable {
                    url: self.cfg.url.clone(),
                    message: e.to_string(),
                })?;
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            // Every whole row so far; a row cut by the frame's end waits
            // for the next frame.
            let mut r = rowbinary::Reader::new(&buf);
            let mut used = 0;
            while !r.done() {
                match read_stored(&mut r) {
                    Ok(row) => {
                        used = r.position();
                        if !f(row) {
                            return Ok(());
                        }
                    }
                    Err(e) if done => return Err(e),
                    Err(_) => break,
                }
            }
            buf.drain(..used);
            if done {
                return Ok(());
            }
        }
    }

    /// Inserts the lines of validated pushes in one INSERT; returns once
    /// ClickHouse confirmed it. `received`: ns since the epoch.
    pub async fn insert(
        &self,
        pushes: &[(PushRequest, LineBatch)],
        received: i64,
    ) -> Result<u64, ClickHouseError> {
        let mut rows = Vec::new();
        let mut n = 0u64;
        for (req, batch) in pushes {
            n += encode_rows(&mut rows, req, batch, received);
        }
        if n == 0 {
            return Ok(0);
        }
        let stmt = format!(
            "INSERT INTO {}.lines ({}) FORMAT RowBinary",
            sql::ident(&self.cfg.database),
            sql::COLUMNS
        );
        self.post(&stmt, Bytes::from(rows)).await?;
        Ok(n)
    }

    /// Runs a statement and returns its answer's body.
    pub async fn execute(&self, statement: &str, data: Bytes) -> Result<Bytes, ClickHouseError> {
        self.post(statement, data).await
    }

    /// The database.
    pub fn database(&self) -> &str {
        &self.cfg.database
    }

    /// Lines of a log query that arrived at or after `received` (ns), in
    /// arrival order, at most `limit`: what a live tail polls for.
    pub async fn arrived_since(
        &self,
        q: &Query,
        received: i64,
        limit: u64,
    ) -> Result<Vec<Stored>, ClickHouseError> {
        let stmt = sql::arrived_since(&self.cfg.database, q, received, limit)?;
        let body = self.post(&stmt, Bytes::new()).await?;
        decode_stored(&body)
    }

    /// Drops the days of lines older than the retention (whole partitions,
    /// see [`sql::drop_day`]); returns the days dropped. Several
    /// aggregators may run it at once: dropping a partition that is gone
    /// is no error.
    pub async fn drop_expired(&self) -> Result<Vec<String>, ClickHouseError> {
        let Some(days) = self.cfg.retention_days else {
            return Ok(Vec::new());
        };
        let db = &self.cfg.database;
        let expired = self.strings(&sql::expired_days(db, days)).await?;
        for day in &expired {
            self.post(
                &sql::drop_day(db, self.cfg.cluster.as_deref(), day),
                Bytes::new(),
            )
            .await?;
        }
        Ok(expired)
    }

    /// The streams (node and file labels) with lines `q`'s matchers
    /// select in `[from, to)`.
    pub async fn series(
        &self,
        q: &Query,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, FileLabels)>, ClickHouseError> {
        let body = self
            .post(&sql::series(&self.cfg.database, q, from, to)?, Bytes::new())
            .await?;
        let mut r = rowbinary::Reader::new(&body);
        let mut out = Vec::new();
        while !r.done() {
            out.push(read_stream(&mut r)?);
        }
        Ok(out)
    }

    /// What `q` would read in `[from, to)`: lines, bytes of text, streams,
    /// stream-days ([`sql::index_stats`]).
    pub async fn index_stats(
        &self,
        q: &Query,
        from: i64,
        to: i64,
    ) -> Result<[u64; 4], ClickHouseError> {
        let body = self
            .post(
                &sql::index_stats(&self.cfg.database, q, from, to)?,
                Bytes::new(),
            )
            .await?;
        let mut r = rowbinary::Reader::new(&body);
        Ok([r.u64()?, r.u64()?, r.u64()?, r.u64()?])
    }

    /// The strings a one-column RowBinary `statement` returns.
    pub async fn strings(&self, statement: &str) -> Result<Vec<String>, ClickHouseError> {
        let body = self.post(statement, Bytes::new()).await?;
        let mut r = rowbinary::Reader::new(&body);
        let mut out = Vec::new();
        while !r.done() {
            out.push(String::from_utf8_lossy(r.string()?).into_owned());
        }
        Ok(out)
    }

    /// One page of a log query's lines, after `after` in its order.
    pub async fn query_page(
        &self,
        q: &Query,
        w: sql::Window,
        after: Option<&sql::Cursor>,
    ) -> Result<Vec<Stored>, ClickHouseError> {
        let stmt = sql::select_after(&self.cfg.database, q, w, after)?;
        let body = self.post(&stmt, Bytes::new()).await?;
        decode_stored(&body)
    }

    /// A log query with pipeline stages: the selector and the line filters
    /// before the stages run in ClickHouse, the stages here, page by page
    /// until `w.limit` lines passed them (or the lines ran out).
    pub async fn query_piped(
        &self,
        q: &Query,
        w: sql::Window,
    ) -> Result<Vec<Entry>, ClickHouseError> {
        self.query_piped_in_pages(q, w, PAGE).await
    }

    /// [`ClickHouse::query_piped`] with pages of `page_size` lines.
    pub async fn query_piped_in_pages(
        &self,
        q: &Query,
        w: sql::Window,
        page_size: u64,
    ) -> Result<Vec<Entry>, ClickHouseError> {
        let mut pages = Answer::new(self, q, w, page_size);
        let mut out = Vec::new();
        while let Some(mut page) = pages.next().await? {
            out.append(&mut page);
        }
        Ok(out)
    }

    /// A metric query. Aggregations that count lines or bytes of the
    /// stream's labels (`count_over_time`, `rate`, `bytes_*`,
    /// `absent_over_time`, with line filters only) are counted in
    /// ClickHouse by stream and time bucket ([`sql::buckets`]): only the
    /// counts cross the wire. The others read their lines page by page
    /// (selector and line filters in SQL, each line once) for the pipeline
    /// and unwrap here. Either way the embedded store's evaluator does the
    /// rest, so the answers are the same.
    pub async fn metric(
        &self,
        m: logfleet_logql::Metric,
        steps: logfleet_logql::eval::Steps,
    ) -> Result<logfleet_logql::eval::Value, logfleet_store::query::QueryError> {
        use logfleet_store::query::QueryError;
        let ch = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // Stream ids by the file's node and labels (labels may change
            // within a file when pod metadata arrives).
            let mut ids: std::collections::HashMap<(String, FileLabels), u32> = Default::default();
            let bucket_ch = ch.clone();
            let bucket_handle = handle.clone();
            let mut buckets =
                move |agg: &logfleet_logql::RangeAgg,
                      b: logfleet_store::evaluate::Buckets,
                      f: &mut logfleet_store::evaluate::BucketSink<'_>| {
                    use logfleet_logql::RangeOp as O;
                    let bytes = matches!(agg.op, O::BytesOverTime | O::BytesRate);
                    bucket_handle
                        .block_on(bucket_ch.buckets(&agg.query, b, bytes, f))
                        .map_err(|e| QueryError::Unavailable(e.to_string()))
                };
            logfleet_store::evaluate::metric_over_buckets(
                &m,
                steps,
                &mut |agg, bounds, f| {
                    // In no order: one statement, rows decoded as they
                    // arrive (stages and unwrap run here).
                    let base = without_stages(&agg.query);
                    let stmt = sql::select_unordered(
                        ch.database(),
                        &base,
                        bounds.from.unwrap_or(i64::MIN),
                        bounds.to.unwrap_or(i64::MAX),
                    )
                    .map_err(|e| QueryError::Unavailable(e.to_string()))?;
                    let mut sink = |r: Stored| {
                        let labels = r.entry.labels.unwrap_or_default();
                        let next = ids.len() as u32;
                        let id = *ids
                            .entry((r.entry.node.clone(), labels.clone()))
                            .or_insert(next);
                        let info = logfleet_store::labels::StreamInfo {
                            node: r.entry.node.as_str().into(),
                            labels,
                        };
                        let mut flags = 0;
                        if r.entry.unterminated {
                            flags |= logfleet_proto::lines::UNTERMINATED;
                        }
                        if r.entry.cut {
                            flags |= logfleet_proto::lines::CUT;
                        }
                        if r.entry.unparsed {
                            flags |= logfleet_proto::lines::UNPARSED;
                        }
                        let line = logfleet_proto::Line {
                            range: 0,
                            ts: r.entry.ts_unix_nano,
                            offset: r.offset,
                            stream: r.entry.stream,
                            flags,
                            text: Bytes::from(r.entry.line),
                        };
                        f(id, &info, &line)
                    };
                    handle
                        .block_on(ch.stream_stored(&stmt, &mut sink))
                        .map_err(|e| QueryError::Unavailable(e.to_string()))
                },
                Some(&mut buckets),
            )
        })
        .await
        .map_err(|e| QueryError::Unavailable(e.to_string()))?
    }

    /// Hands `f` the counts of [`sql::buckets`].
    async fn buckets(
        &self,
        q: &Query,
        b: logfleet_store::evaluate::Buckets,
        bytes: bool,
        f: &mut logfleet_store::evaluate::BucketSink<'_>,
    ) -> Result<(), ClickHouseError> {
        // The stages (label-only here) are the evaluator's.
        let base = without_stages(q);
        let stmt = sql::buckets(
            &self.cfg.database,
            &base,
            b.bounds.from.unwrap_or(i64::MIN),
            b.bounds.to.unwrap_or(i64::MAX),
            b.width,
            bytes,
        )?;
        let body = self.post(&stmt, Bytes::new()).await?;
        let mut r = rowbinary::Reader::new(&body);
        while !r.done() {
            let (node, labels) = read_stream(&mut r)?;
            let stream = r.u8()?;
            let bucket = r.i64()?;
            let lines = r.u64()?;
            let bytes = r.u64()?;
            f(
                logfleet_store::labels::label_pairs(&node, &labels, i32::from(stream)),
                bucket,
                lines,
                bytes,
            );
        }
        Ok(())
    }

    /// The lines a log query selects, each once.
    pub async fn query(&self, q: &Query, w: sql::Window) -> Result<Vec<Entry>, ClickHouseError> {
        let stmt = sql::select(&self.cfg.database, q, w)?;
        let body = self.post(&stmt, Bytes::new()).await?;
        decode_rows(&body)
    }
}

/// Appends the RowBinary rows of one push; returns how many.
pub fn encode_rows(out: &mut Vec<u8>, req: &PushRequest, batch: &LineBatch, received: i64) -> u64 {
    let mut n = 0;
    // Pushes are validated first (`ingest::validate`): every line's range
    // exists and has labels, so no line is skipped below.
    for l in batch.lines() {
        let Some(labels) = req
            .ranges
            .get(l.range as usize)
            .and_then(|r| r.labels.as_ref().map(|lb| (r, lb)))
        else {
            continue;
        };
        let (range, fl) = labels;
        out.extend_from_slice(&l.ts.to_le_bytes());
        rowbinary::string(out, req.node.as_bytes());
        rowbinary::string(out, fl.namespace.as_bytes());
        rowbinary::string(out, fl.pod.as_bytes());
        rowbinary::string(out, fl.pod_uid.as_bytes());
        rowbinary::string(out, fl.container.as_bytes());
        out.extend_from_slice(&fl.restart.to_le_bytes());
        rowbinary::strings(out, fl.extra.iter().map(|e| e.name.as_bytes()));
        rowbinary::strings(out, fl.extra.iter().map(|e| e.value.as_bytes()));
        out.push(u8::try_from(l.stream).unwrap_or(0));
        out.extend_from_slice(&range.file_id.to_le_bytes());
        out.extend_from_slice(&l.offset.to_le_bytes());
        out.extend_from_slice(&l.flags.to_le_bytes());
        rowbinary::string(out, &l.text);
        out.extend_from_slice(&received.to_le_bytes());
        n += 1;
    }
    n
}

/// A stored line: the entry a query returns, and its identity and arrival.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The line as queries return it.
    pub entry: Entry,
    /// Its file.
    pub file_id: u64,
    /// Its offset in the file.
    pub offset: u64,
    /// When the insert holding it was made, ns since the epoch.
    pub received: i64,
}

/// Lines a log query pages through at a time.
pub const PAGE: u64 = 5_000;

impl Stored {
    /// Where a page ending at this line ends.
    pub fn cursor(&self) -> sql::Cursor {
        sql::Cursor {
            ts: self.entry.ts_unix_nano,
            node: self.entry.node.clone(),
            file_id: self.file_id,
            offset: self.offset,
        }
    }
}

/// The lines a query's selector and line filters select (in SQL), page
/// by page, each page one `SELECT` after the previous page's last line:
/// at most a page is held, whatever the result's size. Pipeline stages
/// are not applied (see [`Answer`]).
pub struct Pages {
    ch: ClickHouse,
    base: Query,
    window: sql::Window,
    page_size: u64,
    after: Option<sql::Cursor>,
    done: bool,
}

impl Pages {
    /// Pages of `page_size` lines of `q` (its pipeline ignored) within
    /// `w` (its limit: lines in all, 0 for no limit).
    pub fn new(ch: &ClickHouse, q: &Query, w: sql::Window, page_size: u64) -> Pages {
        Pages {
            ch: ch.clone(),
            base: without_stages(q),
            window: w,
            page_size: page_size.max(1),
            after: None,
            done: false,
        }
    }

    /// The next page; `None` once the lines (or the limit) ran out.
    pub async fn next(&mut self) -> Result<Option<Vec<Stored>>, ClickHouseError> {
        if self.done {
            return Ok(None);
        }
        let want = match self.window.limit {
            0 => self.page_size,
            left => left.min(self.page_size),
        };
        let page = sql::Window {
            limit: want,
            ..self.window
        };
        let rows = self
            .ch
            .query_page(&self.base, page, self.after.as_ref())
            .await?;
        if self.window.limit > 0 {
            self.window.limit -= rows.len() as u64;
            self.done = self.window.limit == 0;
        }
        self.done |= (rows.len() as u64) < want;
        match rows.last() {
            Some(last) => {
                self.after = Some(last.cursor());
                Ok(Some(rows))
            }
            None => Ok(None),
        }
    }
}

/// A log query's answer, page by page: [`Pages`] of what the selector
/// and the line filters select, then the pipeline stages here, until the
/// query's limit counts lines that passed them.
pub struct Answer {
    pages: Pages,
    pipeline: logfleet_logql::pipeline::Pipeline,
    limit: u64,
    sent: u64,
}

impl Answer {
    /// The answer to `q` within `w`, reading pages of `page_size` lines.
    pub fn new(ch: &ClickHouse, q: &Query, w: sql::Window, page_size: u64) -> Answer {
        let piped = !q.pipeline.is_empty();
        // With stages, the limit counts lines that pass them: pages read on
        // until it is reached.
        let read = sql::Window {
            limit: if piped { 0 } else { w.limit },
            ..w
        };
        Answer {
            pages: Pages::new(ch, q, read, page_size),
            pipeline: q.pipeline.clone(),
            limit: w.limit,
            sent: 0,
        }
    }

    /// The next lines of the answer (never empty); `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Vec<Entry>>, ClickHouseError> {
        loop {
            if self.limit > 0 && self.sent >= self.limit {
                return Ok(None);
            }
            let Some(rows) = self.pages.next().await? else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let mut e = r.entry;
                if !self.pipeline.is_empty() {
                    let labels = e.labels.clone().unwrap_or_default();
                    let stream: logfleet_logql::pipeline::Labels =
                        logfleet_store::labels::label_pairs(&e.node, &labels, e.stream)
                            .into_iter()
                            .collect();
                    let Some(p) = self.pipeline.process(&stream, &e.line) else {
                        continue;
                    };
                    logfleet_store::labels::pipe(&mut e, p);
                }
                out.push(e);
                self.sent += 1;
                if self.limit > 0 && self.sent >= self.limit {
                    break;
                }
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }
}

/// `q` without its pipeline stages and unwrap: what SQL does of it (the
/// selector and the line filters); the rest runs here.
fn without_stages(q: &Query) -> Query {
    Query {
        pipeline: Default::default(),
        unwrap: None,
        ..q.clone()
    }
}

/// Reads a stream's node and file labels, as `sql::STREAM_COLUMNS` gives
/// them.
fn read_stream(r: &mut rowbinary::Reader<'_>) -> Result<(String, FileLabels), ClickHouseError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let node = text(r.string()?);
    let namespace = text(r.string()?);
    let pod = text(r.string()?);
    let pod_uid = text(r.string()?);
    let container = text(r.string()?);
    let restart = r.u32()?;
    let names = r.strings()?;
    let values = r.strings()?;
    let extra = names
        .iter()
        .zip(&values)
        .map(|(n, v)| Label {
            name: text(n),
            value: text(v),
        })
        .collect();
    Ok((
        node,
        FileLabels {
            namespace,
            pod,
            pod_uid,
            container,
            restart,
            extra,
        },
    ))
}

/// Entries from a RowBinary reply with [`sql::COLUMNS`].
pub fn decode_rows(body: &[u8]) -> Result<Vec<Entry>, ClickHouseError> {
    Ok(decode_stored(body)?.into_iter().map(|s| s.entry).collect())
}

/// Stored lines from a RowBinary reply with [`sql::COLUMNS`].
pub fn decode_stored(body: &[u8]) -> Result<Vec<Stored>, ClickHouseError> {
    let mut r = rowbinary::Reader::new(body);
    let mut out = Vec::new();
    while !r.done() {
        out.push(read_stored(&mut r)?);
    }
    Ok(out)
}

/// Reads one row of [`sql::COLUMNS`].
fn read_stored(r: &mut rowbinary::Reader<'_>) -> Result<Stored, ClickHouseError> {
    let ts = r.i64()?;
    let (node, labels) = read_stream(r)?;
    let stream = r.u8()?;
    let file_id = r.u64()?;
    let offset = r.u64()?;
    let flags = r.u32()?;
    let line = r.string()?.to_vec();
    let received = r.i64()?;
    let entry = Entry {
        ts_unix_nano: ts,
        node,
        labels: Some(labels),
        stream: Stream::try_from(i32::from(stream)).unwrap_or(Stream::Unknown) as i32,
        line,
        unterminated: flags & logfleet_proto::lines::UNTERMINATED != 0,
        cut: flags & logfleet_proto::lines::CUT != 0,
        unparsed: flags & logfleet_proto::lines::UNPARSED != 0,
        ..Default::default()
    };
    Ok(Stored {
        entry,
        file_id,
        offset,
        received,
    })
}

struct Job {
    req: PushRequest,
    batch: LineBatch,
    bytes: u64,
    reply: oneshot::Sender<Result<u64, Arc<ClickHouseError>>>,
}

/// Batches pushes into inserts.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    room: Arc<Semaphore>,
    room_kib: u32,
    limits: Limits,
}

/// Settings of the [`Writer`].
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Insert when this many bytes of line text wait.
    pub batch_bytes: u64,
    /// Insert at the latest this long after the first push waiting.
    pub batch_wait: Duration,
    /// Decompressed push bytes held at once; a push waits for room
    /// (back-pressure towards agents while ClickHouse is slow).
    pub max_inflight_bytes: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_bytes: 8 << 20,
            batch_wait: Duration::from_millis(200),
            max_inflight_bytes: 64 << 20,
        }
    }
}

impl Writer {
    /// Starts the insert task.
    pub fn start(ch: ClickHouse, cfg: WriterConfig, limits: Limits) -> Writer {
        let (tx, rx) = mpsc::channel(1024);
        let room_kib = (cfg.max_inflight_bytes / 1024).clamp(1, u32::MAX as u64 >> 4) as u32;
        tokio::spawn(insert_loop(ch, cfg, rx));
        Writer {
            tx,
            room: Arc::new(Semaphore::new(room_kib as usize)),
            room_kib,
            limits,
        }
    }

    /// Decodes, validates and stores one push; returns the lines stored
    /// once ClickHouse confirmed the insert holding them.
    pub async fn push(&self, req: PushRequest) -> Result<u64, ClickHouseError> {
        let want = ((req.raw_len / 1024) as u32 + 1).min(self.room_kib);
        let _permit = self
            .room
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| ClickHouseError::Closed)?;
        let limits = self.limits;
        let (req, batch) = tokio::task::spawn_blocking(move || {
            let batch = logfleet_proto::decode_payload(&req, limits)?;
            logfleet_store::push::validate(&req, &batch)?;
            Ok::<_, ClickHouseError>((req, batch))
        })
        .await
        .map_err(|_| ClickHouseError::Closed)??;
        let (reply, rx) = oneshot::channel();
        let bytes = batch.text.len() as u64;
        self.tx
            .send(Job {
                req,
                batch,
                bytes,
                reply,
            })
            .await
            .map_err(|_| ClickHouseError::Closed)?;
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ClickHouseError::Insert(e)),
            Err(_) => Err(ClickHouseError::Closed),
        }
    }
}

async fn insert_loop(ch: ClickHouse, cfg: WriterConfig, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + cfg.batch_wait;
        let mut bytes = first.bytes;
        let mut jobs = vec![first];
        while bytes < cfg.batch_bytes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    bytes += j.bytes;
                    jobs.push(j);
                }
                _ => break,
            }
        }
        let received = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let (pushes, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| ((j.req, j.batch), j.reply))
            .unzip();
        match ch.insert(&pushes, received).await {
            Ok(_) => {
                for ((_, batch), reply) in pushes.iter().zip(replies) {
                    let _ = reply.send(Ok(batch.line_count() as u64));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, pushes = pushes.len(), "insert into ClickHouse failed; agents retry");
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_rowbinary() {
        let mut b = logfleet_proto::LinesBuilder::default();
        b.push(
            0,
            5,
            100,
            Stream::Stderr as i32,
            logfleet_proto::lines::CUT,
            b"\xffbytes\nline",
        );
        let batch = b.finish();
        let req = PushRequest {
            node: "n1".into(),
            ranges: vec![logfleet_proto::v1::FileRange {
                file_id: u64::MAX,
                labels: Some(FileLabels {
                    namespace: "ns".into(),
                    pod: "p".into(),
                    pod_uid: "u".into(),
                    container: "c".into(),
                    restart: 2,
                    extra: vec![Label {
                        name: "app".into(),
                        value: "a".into(),
                    }],
                }),
                start: 0,
                end: 200,
                lines_end: 0,
            }],
            ..Default::default()
        };
        let mut rows = Vec::new();
        assert_eq!(encode_rows(&mut rows, &req, &batch, 9), 1);
        let e = decode_rows(&rows).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, b"\xffbytes\nline");
        assert_eq!(
            (e[0].ts_unix_nano, e[0].stream, e[0].cut),
            (5, Stream::Stderr as i32, true)
        );
        assert_eq!(e[0].labels.as_ref().unwrap().extra[0].value, "a");
        assert!(decode_rows(&rows[..rows.len() - 1]).is_err());
    }
}
