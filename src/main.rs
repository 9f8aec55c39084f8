//! `logfleet`: one binary for the node agent, the aggregator and the user
//! commands. This file only parses arguments and calls the libraries.

mod bench;
mod bench_clickhouse;
mod bench_fleet;
mod bench_load;
mod client;
mod demo;
mod identity;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "logfleet",
    version,
    about = "Kubernetes container log consolidation"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `logfleet_agent=debug`.
    #[arg(long, env = "LOGFLEET_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent (one per node, as a DaemonSet).
    Agent(Box<AgentArgs>),
    /// Run the aggregator.
    Aggregator(Box<AggregatorArgs>),
    /// Query stored lines.
    Query(QueryArgs),
    /// Follow lines as they are stored.
    Tail(TailArgs),
    /// List the agents that reported.
    Agents(AgentsArgs),
    /// Run the whole pipeline on this machine: an aggregator and three
    /// simulated nodes, each with a kubelet-style writer and an agent.
    Demo(DemoArgs),
    /// One row per expected node: its agent pod, readiness, revision, last
    /// push, and why it lacks a working agent; then a summary.
    Status(StatusArgsCli),
    /// Run the operator: roll out agents and aggregators from LogCollector
    /// resources and report coverage in their status.
    Controller(ControllerArgs),
    /// Print the LogCollector CustomResourceDefinition as YAML.
    Crd,
    /// Print every object the controller would apply for a LogCollector,
    /// like `helm template`.
    Render(RenderArgs),
    /// Print the install bundle (deploy/logfleet.yaml; with --openshift,
    /// deploy/openshift.yaml).
    Bundle {
        /// Image for the controller and the default LogCollector.
        #[arg(long, env = "LOGFLEET_IMAGE", default_value = logfleet_controller::crd::DEFAULT_IMAGE)]
        image: String,
        /// Print what OpenShift needs besides the bundle: the agents'
        /// SecurityContextConstraints and the controller's right to grant it.
        #[arg(long, env = "LOGFLEET_BUNDLE_OPENSHIFT")]
        openshift: bool,
    },
    /// Measure the real processes on a generated workload (docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Print shell completions, e.g. `logfleet completions bash > /etc/bash_completion.d/logfleet`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Only LogCollectors of this namespace (default: every namespace).
    #[arg(long, env = "LOGFLEET_NAMESPACE")]
    namespace: Option<String>,
    /// Metrics (/metrics) and probes (/healthz, /readyz).
    #[arg(long, env = "LOGFLEET_HTTP_ADDR", default_value = "0.0.0.0:9103")]
    http_addr: SocketAddr,
    /// A ready agent the aggregator has not heard from for this long is NotReporting.
    #[arg(long, env = "LOGFLEET_SILENCE", default_value = "5m", value_parser = parse_duration)]
    silence: Duration,
    /// Changes closer together than this make one reconcile.
    #[arg(long, env = "LOGFLEET_DEBOUNCE", default_value = "2s", value_parser = parse_duration)]
    debounce: Duration,
    /// Act only while holding the Lease, so that replicas can run side by side.
    #[arg(long, env = "LOGFLEET_LEADER_ELECTION", default_value = "true", action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (the controller's own).
    #[arg(long, env = "LOGFLEET_POD_NAMESPACE", default_value = "logfleet")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "LOGFLEET_POD_NAME")]
    identity: Option<String>,
    /// Namespaces whose LogCollectors are honoured (`*`: every namespace).
    /// A collector runs its image as root on every node: by default only
    /// the controller's own namespace.
    #[arg(long, env = "LOGFLEET_COLLECTOR_NAMESPACES", value_delimiter = ',')]
    collector_namespaces: Option<Vec<String>>,
    /// Images collectors may run: repositories (any tag or digest), exact
    /// references, or prefixes ending in `/`; `*`: any image.
    #[arg(
        long,
        env = "LOGFLEET_ALLOWED_IMAGES",
        value_delimiter = ',',
        default_value = logfleet_controller::policy::OWN_REPOSITORY
    )]
    allowed_images: Vec<String>,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// A LogCollector in YAML or JSON (`-` for stdin); default: the default
    /// one (`logfleet/logfleet`, every default).
    #[arg(short = 'f', long = "filename", env = "LOGFLEET_FILENAME")]
    file: Option<PathBuf>,
    /// Namespace when the file names none.
    #[arg(long, env = "LOGFLEET_NAMESPACE", default_value = "logfleet")]
    namespace: String,
    /// Render for OpenShift (the agents use the SecurityContextConstraints of
    /// `logfleet bundle --openshift`; the SELinux type for reading host logs).
    #[arg(long, env = "LOGFLEET_OPENSHIFT")]
    openshift: bool,
    /// The controller's namespace: the NetworkPolicy lets it read the
    /// aggregator's agents API.
    #[arg(
        long,
        env = "LOGFLEET_CONTROLLER_NAMESPACE",
        default_value = "logfleet"
    )]
    controller_namespace: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusOutput {
    Table,
    /// One JSON document (`jsonl` is accepted too).
    #[value(alias = "jsonl")]
    Json,
}

#[derive(clap::Args)]
struct StatusArgsCli {
    /// A `kubectl get nodes,pods,daemonsets,logcollectors -A -o json` dump
    /// (support bundles, must-gather) instead of the live cluster of the
    /// current kubeconfig.
    #[arg(long, env = "LOGFLEET_FROM_FILE")]
    from_file: Option<std::path::PathBuf>,
    /// Namespace of the LogCollector (default: any).
    #[arg(long, env = "LOGFLEET_NAMESPACE")]
    namespace: Option<String>,
    /// Name of the LogCollector (default: any).
    #[arg(long, env = "LOGFLEET_NAME")]
    name: Option<String>,
    /// Output format.
    #[arg(
        long,
        env = "LOGFLEET_STATUS_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    output: StatusOutput,
    /// Aggregator to ask for each node's last push (LAST PUSH, NotReporting).
    #[arg(long, env = "LOGFLEET_AGGREGATOR")]
    aggregator: Option<String>,
    /// File holding the aggregator's bearer token.
    #[arg(long, env = "LOGFLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate for the aggregator's TLS.
    #[arg(long, env = "LOGFLEET_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// A ready agent the aggregator has not heard from for this long is NotReporting.
    #[arg(long, env = "LOGFLEET_SILENCE", default_value = "5m", value_parser = parse_duration)]
    silence: Duration,
    /// Exit 0 even when expected nodes lack a working agent (by default
    /// that exits 3, for scripts and CI).
    #[arg(long, env = "LOGFLEET_STATUS_EXIT_ZERO")]
    exit_zero: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Write a kubelet-style tree of CRI files.
    Generate {
        /// Scratch directory.
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Total size.
        #[arg(long, env = "LOGFLEET_BENCH_SIZE", default_value = "1GiB", value_parser = parse_size)]
        size: u64,
        /// Number of files.
        #[arg(long, env = "LOGFLEET_BENCH_FILES", default_value = "100")]
        files: usize,
    },
    /// Agent -> aggregator over the generated tree: CPU, throughput, RSS, bytes on disk.
    Pipeline {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Agent compression.
        #[arg(long, env = "LOGFLEET_BENCH_COMPRESSION", default_value = "zstd")]
        compression: String,
        /// Multi-line detector for every container (none, java, auto, ...).
        #[arg(long, env = "LOGFLEET_BENCH_MULTILINE", default_value = "none")]
        multiline: String,
        /// Serve this many pods of the node from a stand-in API server and
        /// label lines from them (0: no metadata).
        #[arg(long, env = "LOGFLEET_BENCH_METADATA_PODS", default_value = "0")]
        metadata_pods: usize,
    },
    /// The tree through an aggregator with --store clickhouse into Debian's
    /// ClickHouse on loopback: ingest cost (aggregator and ClickHouse), bytes
    /// on disk, the needle scan and the newest 1,000 lines.
    Clickhouse {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
    },
    /// Queries over what a pipeline run stored.
    Query {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Which pipeline run's data.
        #[arg(long, env = "LOGFLEET_BENCH_COMPRESSION", default_value = "zstd")]
        compression: String,
    },
    /// Latency from acknowledgement to a tailing client.
    Tail {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Number of pushes.
        #[arg(long, env = "LOGFLEET_BENCH_PUSHES", default_value = "1000")]
        pushes: usize,
    },
    /// An agent idle-tailing many files.
    Idle {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Number of files.
        #[arg(long, env = "LOGFLEET_BENCH_FILES", default_value = "1000",
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        files: usize,
        /// Measurement window, seconds.
        #[arg(long, env = "LOGFLEET_BENCH_SECONDS", default_value = "30",
              value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
    },
    /// Many concurrent pushers with large batches against one aggregator:
    /// its peak RSS and ack latency.
    Pushers {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Concurrent pushers, each its own connection and node.
        #[arg(long, env = "LOGFLEET_BENCH_CLIENTS", default_value = "500")]
        clients: usize,
        /// Pushes per pusher.
        #[arg(long, env = "LOGFLEET_BENCH_PUSHES", default_value = "4")]
        pushes: usize,
        /// Raw bytes per push.
        #[arg(long, env = "LOGFLEET_BENCH_BATCH_SIZE", default_value = "4MiB", value_parser = parse_size)]
        batch_size: u64,
    },
    /// Many simulated agents against one aggregator: ack latency, CPU per
    /// MB, RSS, restart time, query latencies.
    Fleet {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Simulated agents (each its own connection and node).
        #[arg(long, env = "LOGFLEET_BENCH_AGENTS", default_value = "1000")]
        agents: usize,
        /// Container log files per agent.
        #[arg(long, env = "LOGFLEET_BENCH_STREAMS_PER_AGENT", default_value = "30")]
        streams_per_agent: usize,
        /// Lines per second per agent, spread over its streams (one push a
        /// second carries them).
        #[arg(long, env = "LOGFLEET_BENCH_LINES_PER_SECOND", default_value = "200")]
        lines_per_second: usize,
        /// Paced run: one push a second per agent for this long.
        #[arg(long, env = "LOGFLEET_BENCH_DURATION", value_parser = parse_duration, conflicts_with = "pushes")]
        duration: Option<Duration>,
        /// Unpaced run: push as fast as acknowledged until this many pushes.
        #[arg(long, env = "LOGFLEET_BENCH_PUSHES")]
        pushes: Option<u64>,
        /// The aggregator's segment age: how soon after the run the last
        /// pushes are compacted (the bench waits for it).
        #[arg(long, env = "LOGFLEET_BENCH_SEGMENT_AGE", default_value = "30s", value_parser = parse_duration)]
        segment_age: Duration,
    },
    /// The aggregator down while a container keeps writing: the agent's
    /// peak RSS, then its catch-up.
    Outage {
        #[arg(long, env = "LOGFLEET_BENCH_DIR", default_value_os_t = bench::default_dir())]
        dir: PathBuf,
        /// Length of the outage.
        #[arg(long, env = "LOGFLEET_BENCH_DURATION", default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
        /// Bytes written per second.
        #[arg(long, env = "LOGFLEET_BENCH_RATE", default_value = "5MB", value_parser = parse_size)]
        rate: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
}

/// Connection flags shared by every client of the aggregator.
#[derive(clap::Args, Clone)]
struct Conn {
    /// Aggregator gRPC address.
    #[arg(
        long,
        env = "LOGFLEET_AGGREGATOR",
        default_value = logfleet_proto::ports::LOCAL_INGEST_URL
    )]
    aggregator: String,
    /// File holding the bearer token the aggregator expects.
    #[arg(long, env = "LOGFLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the aggregator's TLS certificate.
    #[arg(long, env = "LOGFLEET_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Node name for the `node` label (falls back to $NODE_NAME, then the host name).
    #[arg(long, env = "LOGFLEET_NODE_NAME")]
    node_name: Option<String>,
    /// Root of the container logs.
    #[arg(long, env = "LOGFLEET_LOG_ROOT", default_value = "/var/log/pods")]
    log_root: PathBuf,
    /// Directory for checkpoints (a hostPath, so they survive the pod).
    #[arg(
        long,
        env = "LOGFLEET_STATE_DIR",
        default_value = "/var/lib/logfleet-agent"
    )]
    state_dir: PathBuf,
    #[command(flatten)]
    conn: Conn,
    /// The pod's projected service-account token: sent with every push so
    /// an aggregator that verifies node identity accepts this node's lines.
    #[arg(long, env = "LOGFLEET_IDENTITY_TOKEN_FILE")]
    identity_token_file: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "LOGFLEET_HTTP_ADDR", default_value = "0.0.0.0:9102")]
    http_addr: SocketAddr,
    /// Batch compression: zstd costs the node the least CPU and is stored
    /// as it arrives; gzip stays for compatibility.
    #[arg(long, env = "LOGFLEET_COMPRESSION", value_enum, default_value = "zstd")]
    compression: CompressionArg,
    /// Compression level (zstd 1-22, gzip 0-9); default 1 for both, the cheapest on node CPU.
    #[arg(long, env = "LOGFLEET_COMPRESSION_LEVEL")]
    compression_level: Option<i32>,
    /// Seal a batch at this much line text.
    #[arg(long, env = "LOGFLEET_BATCH_SIZE", default_value = "1MiB", value_parser = parse_size)]
    batch_size: u64,
    /// Seal a batch when its oldest line waited this long.
    #[arg(long, env = "LOGFLEET_BATCH_WAIT", default_value = "1s", value_parser = parse_duration)]
    batch_wait: Duration,
    /// Lines longer than this are cut into pieces marked as cut.
    #[arg(long, env = "LOGFLEET_MAX_LINE", default_value = "256KiB", value_parser = parse_size)]
    max_line: u64,
    /// A partial (P) run with no final chunk for this long is emitted as unterminated.
    #[arg(long, env = "LOGFLEET_PARTIAL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    partial_timeout: Duration,
    /// A rotated file unchanged this long is finished and closed.
    #[arg(long, env = "LOGFLEET_ROTATE_WAIT", default_value = "30s", value_parser = parse_duration)]
    rotate_wait: Duration,
    /// Full rescan of the log root (backs up inotify).
    #[arg(long, env = "LOGFLEET_RESCAN_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    rescan_interval: Duration,
    /// Check open files this often when no notification arrives.
    #[arg(long, env = "LOGFLEET_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Only namespaces matching this regex (whole value); repeatable. The variable holds one regex
    /// (no delimiter: a comma belongs to `{2,4}`); join several with `|`.
    #[arg(long, env = "LOGFLEET_INCLUDE_NAMESPACE")]
    include_namespace: Vec<String>,
    /// Skip namespaces matching this regex; repeatable. The variable holds one regex
    /// (no delimiter: a comma belongs to `{2,4}`); join several with `|`.
    #[arg(long, env = "LOGFLEET_EXCLUDE_NAMESPACE")]
    exclude_namespace: Vec<String>,
    /// Only pods matching this regex; repeatable. The variable holds one regex
    /// (no delimiter: a comma belongs to `{2,4}`); join several with `|`.
    #[arg(long, env = "LOGFLEET_INCLUDE_POD")]
    include_pod: Vec<String>,
    /// Skip pods matching this regex; repeatable. The variable holds one regex
    /// (no delimiter: a comma belongs to `{2,4}`); join several with `|`.
    #[arg(long, env = "LOGFLEET_EXCLUDE_POD")]
    exclude_pod: Vec<String>,
    /// Only containers matching this regex; repeatable. The variable holds one regex
    /// (no delimiter: a comma belongs to `{2,4}`); join several with `|`.
    #[arg(long, env = "LOGFLEET_INCLUDE_CONTAINER")]
    include_container: Vec<String>,
    /// Skip containers matching this regex; repeatable. The variable holds one regex
    /// (no delimiter: a comma belongs to `{2,4}`); join several with `|`.
    #[arg(long, env = "LOGFLEET_EXCLUDE_CONTAINER")]
    exclude_container: Vec<String>,
    /// Tell the aggregator the agent is alive this often, lines or not.
    #[arg(long, env = "LOGFLEET_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Largest dead-letter file (lines the aggregator refused) before it is
    /// rotated; one older file is kept.
    #[arg(long, env = "LOGFLEET_DEAD_LETTER_SIZE", default_value = "64MiB", value_parser = parse_size)]
    dead_letter_size: u64,
    /// Hold at most this many log files open; more wait until some finish.
    #[arg(long, env = "LOGFLEET_MAX_OPEN_FILES", default_value = "1024")]
    max_open_files: usize,
    /// Group multi-line records (stack traces) of pods that do not choose by
    /// annotation: none, java, python, go, ruby, dotnet, auto, or a regex
    /// matching a record's first line.
    #[arg(long, env = "LOGFLEET_MULTILINE", default_value = "none")]
    multiline: String,
    /// A multi-line record ends when its stream's next line is stamped this
    /// much later, or the clock is this far past its last line.
    #[arg(long, env = "LOGFLEET_MULTILINE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    multiline_timeout: Duration,
    /// Largest multi-line record; longer ones ship in pieces marked as cut.
    #[arg(long, env = "LOGFLEET_MULTILINE_MAX_SIZE", default_value = "256KiB", value_parser = parse_size)]
    multiline_max_size: u64,
    /// Watch this node's pods (in-cluster config or KUBECONFIG) and label
    /// lines with their workload and selected labels; honours the
    /// logfleet.dev/exclude and logfleet.dev/multiline annotations.
    #[arg(long, env = "LOGFLEET_METADATA", default_value_t = false)]
    metadata: bool,
    /// Pod label keys to copy onto lines (sanitised: app.kubernetes.io/name
    /// becomes app_kubernetes_io_name).
    #[arg(
        long,
        env = "LOGFLEET_POD_LABELS",
        value_delimiter = ',',
        default_value = "app,app.kubernetes.io/name,app.kubernetes.io/instance,app.kubernetes.io/version,app.kubernetes.io/component,app.kubernetes.io/part-of,app.kubernetes.io/managed-by"
    )]
    pod_labels: Vec<String>,
    /// Namespace label keys to copy onto lines as namespace_<name>; empty:
    /// namespaces are not watched.
    #[arg(long, env = "LOGFLEET_NAMESPACE_LABELS", value_delimiter = ',')]
    namespace_labels: Vec<String>,
    /// Keep a deleted pod's metadata this long for files still being read.
    #[arg(long, env = "LOGFLEET_METADATA_DELETED_TTL", default_value = "10m", value_parser = parse_duration)]
    metadata_deleted_ttl: Duration,
}

#[derive(clap::Args)]
struct AggregatorArgs {
    /// Directory for the store.
    #[arg(long, env = "LOGFLEET_DATA_DIR", default_value = "/var/lib/logfleet")]
    data_dir: PathBuf,
    /// gRPC address for ingest and queries.
    #[arg(long, env = "LOGFLEET_GRPC_ADDR", default_value = logfleet_proto::ports::INGEST_LISTEN)]
    grpc_addr: SocketAddr,
    /// Address for /metrics, /healthz, /readyz and /api/v1/agents.
    #[arg(long, env = "LOGFLEET_HTTP_ADDR", default_value = logfleet_proto::ports::HTTP_LISTEN)]
    http_addr: SocketAddr,
    /// gRPC address for queries only (default: queries share --grpc-addr).
    /// A port of its own lets a NetworkPolicy admit agents and readers
    /// separately.
    #[arg(long, env = "LOGFLEET_QUERY_ADDR")]
    query_addr: Option<SocketAddr>,
    /// File holding one bearer token for both pushing and reading (each
    /// is overridden by --push-token-file / --read-token-file).
    #[arg(long, env = "LOGFLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// File holding the token agents push with (it cannot read logs).
    #[arg(long, env = "LOGFLEET_PUSH_TOKEN_FILE")]
    push_token_file: Option<PathBuf>,
    /// File holding the token queries and the agents API need.
    #[arg(long, env = "LOGFLEET_READ_TOKEN_FILE")]
    read_token_file: Option<PathBuf>,
    /// TLS certificate (PEM) for every port; needs --tls-key. Re-read when
    /// it changes, so a renewed certificate needs no restart.
    #[arg(long, env = "LOGFLEET_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "LOGFLEET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often the TLS files are checked for a renewed certificate.
    #[arg(long, env = "LOGFLEET_TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    tls_reload_interval: Duration,
    /// Verify node identity: accept a push only with a service-account
    /// token issued for this audience, of --identity-service-account, and
    /// (Kubernetes 1.30+) for the node the push names. Keys come from the
    /// cluster's OIDC discovery (in-cluster config or KUBECONFIG).
    #[arg(
        long,
        env = "LOGFLEET_IDENTITY_AUDIENCE",
        requires = "identity_service_account"
    )]
    identity_audience: Option<String>,
    /// The agents' service account, `<namespace>:<name>`.
    #[arg(
        long,
        env = "LOGFLEET_IDENTITY_SERVICE_ACCOUNT",
        requires = "identity_audience"
    )]
    identity_service_account: Option<String>,
    /// Accept identity tokens that name no node (Kubernetes before 1.30)
    /// for any node: one agent could then push as every node.
    #[arg(
        long,
        env = "LOGFLEET_IDENTITY_ALLOW_WITHOUT_NODE",
        default_value_t = false
    )]
    identity_allow_without_node: bool,
    /// Seal segments at this size.
    #[arg(long, env = "LOGFLEET_SEGMENT_SIZE", default_value = "64MiB", value_parser = parse_size)]
    segment_size: u64,
    /// Seal segments at this age (the time partition).
    #[arg(long, env = "LOGFLEET_SEGMENT_AGE", default_value = "1h", value_parser = parse_duration)]
    segment_age: Duration,
    /// Delete lines older than this ("0s": keep forever).
    #[arg(long, env = "LOGFLEET_RETENTION_AGE", default_value = "7d", value_parser = parse_duration)]
    retention_age: Duration,
    /// Delete the oldest data while the store is larger ("0": no cap).
    #[arg(long, env = "LOGFLEET_RETENTION_SIZE", default_value = "0", value_parser = parse_size)]
    retention_size: u64,
    /// Refuse pushes that inflate to more than this.
    #[arg(long, env = "LOGFLEET_MAX_PAYLOAD", default_value = "64MiB", value_parser = parse_size)]
    max_payload: u64,
    /// Refuse gRPC messages (compressed pushes) larger than this.
    #[arg(long, env = "LOGFLEET_MAX_MESSAGE", default_value = "32MiB", value_parser = parse_size)]
    max_message: u64,
    /// zstd level for payloads that arrive uncompressed or gzipped.
    #[arg(long, env = "LOGFLEET_ZSTD_LEVEL", default_value = "3")]
    zstd_level: i32,
    /// gRPC requests handled at once; more wait (back-pressure, not errors).
    #[arg(long, env = "LOGFLEET_MAX_CONCURRENT_REQUESTS", default_value = "16")]
    max_concurrent_requests: usize,
    /// Decompressed push bytes decoded and written at once; more wait.
    #[arg(long, env = "LOGFLEET_MAX_INFLIGHT", default_value = "64MiB", value_parser = parse_size)]
    max_inflight: u64,
    /// A query stops after this long.
    #[arg(long, env = "LOGFLEET_QUERY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    query_timeout: Duration,
    /// Where lines are stored: `embedded` (this aggregator's data
    /// directory) or `clickhouse` (a ClickHouse server: aggregators keep no
    /// state and scale out; ingest, log queries and agents only so far).
    #[arg(long, env = "LOGFLEET_STORE", value_enum, default_value = "embedded")]
    store: StoreArg,
    /// ClickHouse's HTTP interface, with --store clickhouse.
    #[arg(
        long,
        env = "LOGFLEET_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse_url: String,
    /// ClickHouse database (created when missing).
    #[arg(long, env = "LOGFLEET_CLICKHOUSE_DATABASE", default_value = "logfleet")]
    clickhouse_database: String,
    /// ClickHouse user; none: the server's default user.
    #[arg(long, env = "LOGFLEET_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// File holding the ClickHouse user's password.
    #[arg(long, env = "LOGFLEET_CLICKHOUSE_PASSWORD_FILE")]
    clickhouse_password_file: Option<PathBuf>,
    /// A ClickHouse cluster (remote_servers) to create the schema on:
    /// replicated tables under Distributed ones.
    #[arg(long, env = "LOGFLEET_CLICKHOUSE_CLUSTER")]
    clickhouse_cluster: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreArg {
    Embedded,
    Clickhouse,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Jsonl,
    Raw,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Forward,
    Backward,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// `{selector} [line filters]`, e.g. `{namespace="default", pod=~"web-.*"} |= "error"`.
    query: String,
    #[command(flatten)]
    conn: Conn,
    /// Only lines newer than this (e.g. 1h, 30m).
    #[arg(long, env = "LOGFLEET_SINCE", value_parser = parse_duration, conflicts_with = "from")]
    since: Option<Duration>,
    /// Only lines at or after this RFC 3339 time.
    #[arg(long, env = "LOGFLEET_FROM")]
    from: Option<String>,
    /// Only lines before this RFC 3339 time.
    #[arg(long, env = "LOGFLEET_TO")]
    to: Option<String>,
    /// Maximum lines (0: all).
    #[arg(long, env = "LOGFLEET_LIMIT", default_value = "1000")]
    limit: u64,
    /// Oldest first (forward) or newest first (backward).
    #[arg(
        long,
        env = "LOGFLEET_DIRECTION",
        value_enum,
        default_value = "backward"
    )]
    direction: DirectionArg,
    /// Print the result in the opposite order: with the default backward
    /// direction and a limit, the newest N lines oldest first, as a stack
    /// trace reads.
    #[arg(long, env = "LOGFLEET_REVERSE")]
    reverse: bool,
    /// Output format.
    #[arg(long, env = "LOGFLEET_QUERY_OUTPUT", value_enum, default_value = "raw")]
    output: OutputArg,
}

#[derive(clap::Args)]
struct TailArgs {
    /// `{selector} [line filters]`.
    query: String,
    #[command(flatten)]
    conn: Conn,
    /// Output format.
    #[arg(long, env = "LOGFLEET_TAIL_OUTPUT", value_enum, default_value = "raw")]
    output: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum TableArg {
    Table,
    /// One JSON object per line (`json` is accepted too).
    #[value(alias = "json")]
    Jsonl,
}

#[derive(clap::Args)]
struct AgentsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Output format.
    #[arg(
        long,
        env = "LOGFLEET_AGENTS_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    output: TableArg,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where the demo keeps its files (default: a fresh temporary directory).
    #[arg(long, env = "LOGFLEET_DEMO_DIR")]
    dir: Option<PathBuf>,
    /// gRPC address of the demo's aggregator (default 127.0.0.1:7140, or a
    /// free port when that is taken).
    #[arg(long, env = "LOGFLEET_DEMO_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP address of the demo's aggregator (default 127.0.0.1:7142, or a
    /// free port when that is taken).
    #[arg(long, env = "LOGFLEET_DEMO_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, env = "LOGFLEET_DEMO_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Where the demo's aggregator stores lines: embedded, or clickhouse
    /// (a ClickHouse server reachable at --clickhouse-url).
    #[arg(
        long,
        env = "LOGFLEET_DEMO_STORE",
        value_enum,
        default_value = "embedded"
    )]
    store: StoreArg,
    /// ClickHouse's HTTP interface, with --store clickhouse.
    #[arg(
        long,
        env = "LOGFLEET_DEMO_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse_url: String,
}

fn read_token(path: &Option<PathBuf>) -> Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.trim().to_owned())
                .with_context(|| format!("reading token file {}", p.display()))
        })
        .transpose()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn regexes(v: &[String]) -> Result<Vec<regex::Regex>> {
    v.iter()
        .map(|p| {
            logfleet_agent::discover::full_match(p).with_context(|| format!("bad pattern {p:?}"))
        })
        .collect()
}

fn agent_config(a: AgentArgs) -> Result<logfleet_agent::AgentConfig> {
    use logfleet_proto::v1::Compression;
    let node_name = a
        .node_name
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|n| !n.is_empty())
        .context("no node name: pass --node-name or set NODE_NAME")?;
    let (compression, level) = match a.compression {
        CompressionArg::Gzip => (Compression::Gzip, a.compression_level.unwrap_or(1)),
        CompressionArg::Zstd => (Compression::Zstd, a.compression_level.unwrap_or(1)),
        CompressionArg::None => (Compression::None, 0),
    };
    Ok(logfleet_agent::AgentConfig {
        node_name,
        log_root: a.log_root,
        state_dir: a.state_dir,
        target: logfleet_agent::ship::Target {
            url: a.conn.aggregator,
            token: read_token(&a.conn.token_file)?,
            tls_ca: a.conn.tls_ca,
            tls_ca_pem: None,
            identity_token_file: a.identity_token_file,
        },
        http_addr: Some(a.http_addr),
        compression,
        compression_level: level,
        batch_bytes: a.batch_size as usize,
        batch_wait: a.batch_wait,
        rescan_interval: a.rescan_interval,
        poll_interval: a.poll_interval,
        tail: logfleet_agent::tail::TailConfig {
            max_line: a.max_line as usize,
            partial_timeout: a.partial_timeout,
            rotate_wait: a.rotate_wait,
            max_open_files: a.max_open_files.max(1),
            multiline: logfleet_agent::multiline::Detector::parse(&a.multiline)
                .context("--multiline")?,
            group: logfleet_agent::multiline::GroupConfig {
                timeout: a.multiline_timeout,
                max_bytes: a.multiline_max_size.max(1) as usize,
            },
            ..Default::default()
        },
        metadata: a.metadata.then(|| logfleet_agent::MetadataConfig {
            selection: logfleet_agent::metadata::Selection {
                pod_labels: a.pod_labels.into_iter().filter(|l| !l.is_empty()).collect(),
                namespace_labels: a
                    .namespace_labels
                    .into_iter()
                    .filter(|l| !l.is_empty())
                    .collect(),
            },
            limits: logfleet_agent::metadata::Limits {
                deleted_ttl: a.metadata_deleted_ttl,
                ..Default::default()
            },
            kubeconfig: None,
        }),
        heartbeat_interval: a.heartbeat_interval,
        dead_letter_bytes: a.dead_letter_size,
        filter: logfleet_agent::discover::Filter {
            include_namespace: regexes(&a.include_namespace)?,
            exclude_namespace: regexes(&a.exclude_namespace)?,
            include_pod: regexes(&a.include_pod)?,
            exclude_pod: regexes(&a.exclude_pod)?,
            include_container: regexes(&a.include_container)?,
            exclude_container: regexes(&a.exclude_container)?,
        },
        backoff: logfleet_agent::ship::Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
        },
    })
}

fn aggregator_config(a: AggregatorArgs) -> Result<logfleet_aggregator::AggregatorConfig> {
    Ok(logfleet_aggregator::AggregatorConfig {
        store: logfleet_embedded::StoreConfig {
            data_dir: a.data_dir,
            segment_bytes: a.segment_size,
            segment_age: a.segment_age,
            retention_age: (!a.retention_age.is_zero()).then_some(a.retention_age),
            retention_bytes: (a.retention_size > 0).then_some(a.retention_size),
            zstd_level: a.zstd_level,
        },
        grpc_addr: a.grpc_addr,
        http_addr: a.http_addr,
        query_addr: a.query_addr,
        tokens: {
            let both = read_token(&a.token_file)?;
            logfleet_aggregator::service::Tokens {
                push: read_token(&a.push_token_file)?.or_else(|| both.clone()),
                read: read_token(&a.read_token_file)?.or(both),
            }
        },
        tls: a
            .tls_cert
            .zip(a.tls_key)
            .map(|(cert, key)| logfleet_aggregator::transport::CertFiles { cert, key }),
        tls_reload: a.tls_reload_interval,
        identity: match a.identity_audience.zip(a.identity_service_account) {
            Some((audience, sa)) => {
                let (ns, name) = sa
                    .split_once(':')
                    .filter(|(n, s)| !n.is_empty() && !s.is_empty())
                    .context("--identity-service-account is <namespace>:<name>")?;
                Some(std::sync::Arc::new(
                    logfleet_aggregator::identity::Verifier::new(
                        logfleet_aggregator::identity::Policy {
                            audience,
                            subject: format!("system:serviceaccount:{ns}:{name}"),
                            allow_without_node: a.identity_allow_without_node,
                        },
                        std::sync::Arc::new(identity::ClusterKeys::default()),
                    ),
                ))
            }
            None => None,
        },
        limits: logfleet_proto::Limits {
            max_raw_len: a.max_payload,
        },
        max_message: a.max_message as usize,
        max_concurrent_requests: a.max_concurrent_requests,
        max_inflight_bytes: a.max_inflight,
        query_timeout: a.query_timeout,
        clickhouse: match a.store {
            StoreArg::Embedded => None,
            StoreArg::Clickhouse => Some(logfleet_clickhouse::Config {
                url: a.clickhouse_url,
                database: a.clickhouse_database,
                user: a.clickhouse_user,
                password: read_token(&a.clickhouse_password_file)?,
                retention_days: (!a.retention_age.is_zero())
                    .then(|| (a.retention_age.as_secs() / 86_400).max(1) as u32),
                cluster: a.clickhouse_cluster,
            }),
        },
    })
}

/// Raises the soft limit of open files to the hard one. The default soft
/// limit (1024 on most systems) is reached by an aggregator whose queries
/// hold chunk files open, or an agent with many log files, and EMFILE then
/// reaches seals, snapshots and checkpoints; the hard limit is what the
/// administrator allows.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let from = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::debug!(from, to = lim.rlim_max, "raised the open files limit");
        }
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_open_files_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logfleet: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli.cmd)) {
        // `logfleet tail ... | head` closes our stdout: that is the end of
        // the output, not an error.
        // (serde_json keeps the io::Error inside, out of the chain.)
        let broken = |k: Option<std::io::ErrorKind>| k == Some(std::io::ErrorKind::BrokenPipe);
        if e.chain().any(|c| {
            broken(c.downcast_ref::<std::io::Error>().map(|io| io.kind()))
                || broken(
                    c.downcast_ref::<serde_json::Error>()
                        .and_then(|j| j.io_error_kind()),
                )
        }) {
            std::process::exit(0);
        }
        eprintln!("logfleet: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Agent(a) => {
            let cfg = agent_config(*a)?;
            logfleet_agent::run(cfg, shutdown_signal()).await?;
        }
        Cmd::Aggregator(a) => {
            let cfg = aggregator_config(*a)?;
            logfleet_aggregator::run(cfg, shutdown_signal()).await?;
        }
        Cmd::Query(q) => {
            // The language crate the aggregator parses with, here first: a mistake gets its
            // error and position at once, reachable aggregator or not.
            logfleet_logql::parse_log_query(&q.query)?;
            let (from, to) = client::time_range(q.since, q.from.as_deref(), q.to.as_deref())?;
            let req = logfleet_proto::v1::QueryRequest {
                query: q.query,
                from_unix_nano: from,
                to_unix_nano: to,
                limit: q.limit,
                direction: match q.direction {
                    DirectionArg::Forward => logfleet_proto::v1::Direction::Forward,
                    DirectionArg::Backward => logfleet_proto::v1::Direction::Backward,
                } as i32,
            };
            client::query(
                &q.conn.into(),
                req,
                matches!(q.output, OutputArg::Jsonl),
                q.reverse,
            )
            .await?;
        }
        Cmd::Tail(t) => {
            logfleet_logql::parse_log_query(&t.query)?;
            client::tail(
                &t.conn.into(),
                t.query,
                matches!(t.output, OutputArg::Jsonl),
            )
            .await?;
        }
        Cmd::Agents(a) => {
            client::agents(&a.conn.into(), matches!(a.output, TableArg::Jsonl)).await?;
        }
        Cmd::Status(s) => {
            let last_push = match &s.aggregator {
                Some(url) => {
                    // Without files, the collector's own read token and CA,
                    // from the Secrets its agents mount.
                    let (token, ca_pem) = match (&s.token_file, &s.from_file) {
                        (None, None) => {
                            status::cluster_credentials(s.namespace.as_deref(), s.name.as_deref())
                                .await
                                .context(
                                    "reading the collector's read token and CA from the cluster \
                                     (or pass --token-file and --tls-ca)",
                                )?
                        }
                        _ => (None, None),
                    };
                    client::last_contacts(&client::ConnArgs {
                        url: url.clone(),
                        token_file: s.token_file.clone(),
                        tls_ca: s.tls_ca.clone(),
                        token,
                        ca_pem,
                    })
                    .await?
                }
                // Without an aggregator nothing is known of pushes: every
                // ready agent would look silent, so silence is not judged.
                None => Default::default(),
            };
            let silence = s.aggregator.is_some().then_some(s.silence);
            let missing = status::run(status::StatusArgs {
                from_file: s.from_file.as_deref(),
                namespace: s.namespace.as_deref(),
                name: s.name.as_deref(),
                json: matches!(s.output, StatusOutput::Json),
                silence,
                last_push,
            })
            .await?;
            if missing > 0 && !s.exit_zero {
                // Distinct from 1 (an error): the answer is "not covered".
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(3);
            }
        }
        Cmd::Controller(c) => {
            let identity = c
                .identity
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| format!("logfleet-controller-{}", std::process::id()));
            logfleet_controller::run::run(
                logfleet_controller::run::ControllerConfig {
                    namespace: c.namespace,
                    http_addr: c.http_addr,
                    silence: c.silence,
                    debounce: c.debounce,
                    leader_election: c.leader_election,
                    policy: logfleet_controller::policy::Policy::from_lists(
                        &c.collector_namespaces
                            .unwrap_or_else(|| vec![c.lease_namespace.clone()]),
                        &c.allowed_images,
                    ),
                    lease_namespace: c.lease_namespace,
                    identity,
                },
                shutdown_signal(),
            )
            .await?;
        }
        Cmd::Crd => {
            let yaml = logfleet_controller::crd::crd_yaml()
                .context("rendering the CustomResourceDefinition")?;
            print!("{yaml}");
        }
        Cmd::Render(r) => {
            use logfleet_controller::render;
            let collectors = match &r.file {
                None => vec![logfleet_controller::bundle::default_collector()],
                Some(p) => {
                    let text = if p.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
                    } else {
                        std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?
                    };
                    // What the API server and the controller would refuse
                    // is refused here, before anything is applied.
                    logfleet_controller::check::collectors_in(&text, &r.namespace)
                        .with_context(|| format!("{} is refused", p.display()))?
                }
            };
            let mut objs = Vec::new();
            for lc in &collectors {
                objs.extend(render::render(
                    lc,
                    &render::Options {
                        openshift: r.openshift,
                        controller_namespace: Some(r.controller_namespace.clone()),
                    },
                )?);
            }
            print!("{}", render::to_yaml(&objs)?);
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "logfleet",
                &mut std::io::stdout(),
            );
        }
        Cmd::Bundle { image, openshift } => {
            if openshift {
                print!("{}", logfleet_controller::bundle::openshift_bundle_yaml()?);
            } else {
                print!("{}", logfleet_controller::bundle::bundle_yaml(&image)?);
            }
        }
        Cmd::Bench(b) => match b {
            BenchCmd::Generate { dir, size, files } => {
                let w = bench::generate(&dir, size, files)?;
                println!(
                    "generated {} files, {} lines, {} bytes under {}",
                    w.files,
                    w.lines,
                    w.bytes,
                    dir.join("pods").display()
                );
            }
            BenchCmd::Pipeline {
                dir,
                compression,
                multiline,
                metadata_pods,
            } => bench::pipeline(&dir, &compression, &multiline, metadata_pods).await?,
            BenchCmd::Query { dir, compression } => bench::query(&dir, &compression).await?,
            BenchCmd::Clickhouse { dir } => bench_clickhouse::clickhouse(&dir).await?,
            BenchCmd::Tail { dir, pushes } => bench::tail(&dir, pushes).await?,
            BenchCmd::Idle {
                dir,
                files,
                seconds,
            } => bench::idle(&dir, files, seconds).await?,
            BenchCmd::Pushers {
                dir,
                clients,
                pushes,
                batch_size,
            } => bench_load::pushers(&dir, clients, pushes, batch_size).await?,
            BenchCmd::Outage {
                dir,
                duration,
                rate,
            } => bench_load::outage(&dir, duration.as_secs(), rate).await?,
            BenchCmd::Fleet {
                dir,
                agents,
                streams_per_agent,
                lines_per_second,
                duration,
                pushes,
                segment_age,
            } => {
                bench_fleet::fleet(
                    &dir,
                    bench_fleet::Fleet {
                        agents,
                        streams: streams_per_agent,
                        lines_per_second,
                        duration: duration
                            .or((pushes.is_none()).then_some(Duration::from_secs(600))),
                        pushes,
                        segment_age,
                    },
                )
                .await?
            }
        },
        Cmd::Demo(d) => {
            demo::run(demo::DemoConfig {
                dir: d.dir,
                grpc_addr: d.grpc_addr,
                http_addr: d.http_addr,
                duration: d.duration,
                clickhouse: (d.store == StoreArg::Clickhouse).then(|| {
                    logfleet_clickhouse::Config {
                        url: d.clickhouse_url,
                        database: "logfleet_demo".into(),
                        user: None,
                        password: None,
                        retention_days: None,
                        cluster: None,
                    }
                }),
            })
            .await?;
        }
    }
    Ok(())
}

impl From<Conn> for client::ConnArgs {
    fn from(c: Conn) -> Self {
        client::ConnArgs {
            url: c.aggregator,
            token_file: c.token_file,
            tls_ca: c.tls_ca,
            token: None,
            ca_pem: None,
        }
    }
}
