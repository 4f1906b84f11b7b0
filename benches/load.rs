//! End-to-end load benchmark: the same simulated PLC reached three ways, measured in one run
//! with the targets alternating (round 1: direct, haproxy, ztgate; round 2: the same; …), the
//! median of the rounds reported.
//!
//! - `direct`: plaintext Modbus TCP to the PLC (the floor);
//! - `haproxy`: HAProxy in `mode tcp` terminating mTLS and forwarding plaintext to the PLC;
//! - `ztgate`: `ztgate run` with full inspection (policy, audit file).
//!
//! Run it with `scripts/bench-load.sh` (installs HAProxy, raises `ulimit -n`, builds, cleans
//! up); the script documents the metrics, the settings (`BENCH_*` variables) and the CPU split.
//!
//! Modes: with `--bench` (what `cargo bench` and the script pass) this is the benchmark: it
//! spawns `ztgate sim-plc`, `haproxy` and `ztgate run` as child processes, prints a table and
//! writes JSON (`BENCH_OUT`, default target/bench-load.json). Without `--bench` (as run by
//! `cargo test --all-targets`) it is a smoke run of the load generator against an in-process
//! PLC and gateway that takes about a second.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use ztgate::config::TlsVersions;
use ztgate::demo::client::ModbusClient;
use ztgate::pki::{Ca, CertSpec};

#[path = "support/mod.rs"]
mod support;
use support::{CpuMeter, Proc, env_or, median_of, percentile, pin_self_to_cpu0, rss_kib};

/// The benchmark's request: FC3, read 10 holding registers from address 0.
const READ_PDU: [u8; 5] = [3, 0, 0, 0, 10];
/// The client certificate's CN: the identity the policy lets read.
const CLIENT_CN: &str = "bench-client";
/// Longest a connect + handshake may take before it counts as an error.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Longest a child process may take to be ready.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The answer the simulated PLC gives to [`READ_PDU`]: holding register i = i.
fn expected_response() -> Vec<u8> {
    let mut v = vec![3, 20];
    for i in 0u16..10 {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    rounds: usize,
    /// Length of every measured window.
    window: Duration,
    /// Connections of the "many connections" case.
    conns: usize,
    /// Concurrent handshakers.
    handshakers: usize,
    /// Idle mTLS sessions held open for the memory figure.
    idle_sessions: usize,
    targets: Vec<String>,
    /// Load generator and PLC on CPU 0, the proxy under test alone on CPU 1.
    pin: bool,
    out: PathBuf,
    /// Working directory (certificates, configs, logs); a temp dir when unset.
    dir: Option<PathBuf>,
    /// Every child's PID is appended here, for the script's clean-up trap.
    pids_file: Option<PathBuf>,
    ztgate: PathBuf,
    haproxy: Option<PathBuf>,
    clk_tck: f64,
}

fn find_haproxy() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BENCH_HAPROXY") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join("haproxy"))
        .find(|p| p.is_file())
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let targets: String = env_or("BENCH_TARGETS", "direct,haproxy,ztgate".to_string())?;
        let settings = Settings {
            rounds: env_or("BENCH_ROUNDS", 3usize)?.max(1),
            window: Duration::from_secs_f64(env_or("BENCH_SECS", 5.0f64)?.clamp(0.1, 60.0)),
            conns: env_or("BENCH_CONNS", 64usize)?.clamp(1, 4096),
            handshakers: env_or("BENCH_HANDSHAKERS", 8usize)?.clamp(1, 256),
            idle_sessions: env_or("BENCH_IDLE_SESSIONS", 1000usize)?.min(10_000),
            targets: targets
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            pin: env_or("BENCH_PIN", 1u8)? != 0 && cpus >= 2,
            out: std::env::var_os("BENCH_OUT").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-load.json"),
                PathBuf::from,
            ),
            dir: std::env::var_os("BENCH_DIR").map(PathBuf::from),
            pids_file: std::env::var_os("BENCH_PIDS_FILE").map(PathBuf::from),
            ztgate: std::env::var_os("BENCH_ZTGATE").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_ztgate")),
                PathBuf::from,
            ),
            haproxy: find_haproxy(),
            clk_tck: env_or("BENCH_CLK_TCK", 100.0f64)?,
        };
        for t in &settings.targets {
            if !["direct", "haproxy", "ztgate"].contains(&t.as_str()) {
                bail!("BENCH_TARGETS: unknown target {t:?} (direct, haproxy, ztgate)");
            }
        }
        Ok(settings)
    }

    /// Threads the proxies get: one pinned core, or every core.
    fn proxy_threads(&self) -> usize {
        if self.pin {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc accounting

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The load generator

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Client = ModbusClient<Box<dyn Io>>;

/// Where and how to connect.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    /// mTLS (resumption disabled: every connection is a full handshake); `None`: plaintext.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Errors of one target: counted, the first few kept for the report.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    fn record(&self, what: &str, e: impl std::fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < 5 {
            first.push(format!("{what}: {e}"));
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

async fn connect(ep: &Endpoint) -> anyhow::Result<Client> {
    let connect = async {
        let tcp = TcpStream::connect(ep.addr).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match &ep.tls {
            None => Box::new(tcp),
            Some(config) => Box::new(
                TlsConnector::from(config.clone())
                    .connect(ServerName::IpAddress(ep.addr.ip().into()), tcp)
                    .await?,
            ),
        };
        Ok::<_, std::io::Error>(ModbusClient::new(stream))
    };
    tokio::time::timeout(CONNECT_WAIT, connect)
        .await
        .context("connect timed out")?
        .context("connect")
}

/// What the load generator and the target negotiate, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384
/// X25519` (checked with one transaction).
async fn negotiated(ep: &Endpoint) -> anyhow::Result<String> {
    let Some(config) = &ep.tls else {
        return Ok("plaintext".to_string());
    };
    let tcp = TcpStream::connect(ep.addr).await?;
    let tls = TlsConnector::from(config.clone())
        .connect(ServerName::IpAddress(ep.addr.ip().into()), tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let text = format!(
        "{} {} {}",
        conn.protocol_version()
            .map_or("?".to_string(), |v| format!("{v:?}")),
        conn.negotiated_cipher_suite()
            .map_or("?".to_string(), |c| format!("{:?}", c.suite())),
        conn.negotiated_key_exchange_group()
            .map_or("?".to_string(), |g| format!("{:?}", g.name())),
    );
    let mut client: Client = ModbusClient::new(Box::new(tls));
    transact(&mut client, &expected_response()).await?;
    Ok(text)
}

/// One FC3 transaction, its answer checked (the client bounds the wait for it).
async fn transact(client: &mut Client, expected: &[u8]) -> anyhow::Result<()> {
    let pdu = client.request(1, &READ_PDU).await.context("request")?;
    if pdu != expected {
        bail!("unexpected response {pdu:02x?}");
    }
    Ok(())
}

/// Figures of one measured window.
#[derive(Clone, Debug, Default, Serialize)]
struct Run {
    /// Connections (transaction runs) or concurrent handshakers.
    concurrency: usize,
    secs: f64,
    /// Transactions, or handshakes (each with its one transaction), completed in the window.
    completed: u64,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// CPU seconds (utime + stime) the proxy used in the window.
    proxy_cpu_secs: Option<f64>,
    /// CPU of the proxy, of the PLC and of the load generator, in cores (CPU-s per second).
    proxy_cores: Option<f64>,
    plc_cores: Option<f64>,
    client_cores: Option<f64>,
    /// Every CPU of the machine, busy (all processes, interrupts, steal), in cores; and steal
    /// alone. Busy well above proxy + PLC + client means something else competed.
    machine_busy_cores: Option<f64>,
    steal_cores: Option<f64>,
    /// Completed per CPU-second of the proxy.
    per_proxy_cpu_sec: Option<f64>,
    /// Largest VmRSS of the proxy seen during the window.
    proxy_rss_kib: Option<u64>,
}

/// The processes to account for a window.
#[derive(Clone, Copy)]
struct Watch {
    proxy: Option<u32>,
    plc: Option<u32>,
    clk_tck: f64,
}

impl Watch {
    fn meter(&self) -> CpuMeter {
        CpuMeter::start(
            vec![self.proxy, self.plc, Some(std::process::id())],
            self.clk_tck,
        )
    }

    /// Sleeps until `deadline`, sampling the proxy's RSS; returns the largest sample.
    async fn sample_rss_until(&self, deadline: Instant) -> Option<u64> {
        let mut max = None;
        loop {
            if let Some(pid) = self.proxy {
                max = max.max(rss_kib(pid));
            }
            let now = Instant::now();
            if now >= deadline {
                return max;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
        }
    }

    fn finish(&self, meter: &CpuMeter, mut run: Run) -> Run {
        let secs = meter.t0.elapsed().as_secs_f64();
        let cpu = meter.stop();
        let cores = |c: Option<f64>| c.map(|c| c / secs);
        run.proxy_cores = cores(cpu[0]);
        run.plc_cores = cores(cpu[1]);
        run.client_cores = cores(cpu[2]);
        run.proxy_cpu_secs = cpu[0];
        if let Some((busy, steal)) = meter.machine() {
            run.machine_busy_cores = Some(busy / secs);
            run.steal_cores = Some(steal / secs);
        }
        run
    }
}

/// `conns` connections, each: request, wait for the answer, repeat, for `window`.
async fn transactions(
    ep: &Endpoint,
    conns: usize,
    window: Duration,
    watch: Watch,
    errors: &Errors,
) -> Run {
    let errors_before = errors.count();
    let expected: Arc<[u8]> = expected_response().into();
    // Connect every client and warm it up with one transaction before the clock starts.
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let ready = async {
            let mut c = connect(ep).await?;
            transact(&mut c, &expected).await?;
            Ok::<_, anyhow::Error>(c)
        };
        match ready.await {
            Ok(c) => clients.push(c),
            Err(e) => errors.record("connect + first transaction", format!("{e:#}")),
        }
    }
    let meter = watch.meter();
    let deadline = meter.t0 + window;
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let expected = expected.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            loop {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                if let Err(e) = transact(&mut client, &expected).await {
                    return (latencies, Some(e), client);
                }
                let end = Instant::now();
                if end > deadline {
                    break;
                }
                latencies.push((end - start).as_nanos() as u64);
            }
            (latencies, None, client)
        });
    }
    let rss = watch.sample_rss_until(deadline).await;
    let mut run = watch.finish(
        &meter,
        Run {
            concurrency: conns,
            secs: window.as_secs_f64(),
            proxy_rss_kib: rss,
            ..Run::default()
        },
    );
    // Connections stay open until every task is done (and the figures above are taken).
    let mut latencies = Vec::new();
    let mut open = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, error, client)) => {
                latencies.extend(l);
                if let Some(e) = error {
                    errors.record("transaction", format!("{e:#}"));
                }
                open.push(client);
            }
            Err(e) => errors.record("client task", e),
        }
    }
    drop(open);
    summarize(&mut run, latencies, window, errors.count() - errors_before);
    run
}

fn summarize(run: &mut Run, mut latencies: Vec<u64>, window: Duration, errors: u64) {
    latencies.sort_unstable();
    run.completed = latencies.len() as u64;
    run.per_sec = run.completed as f64 / window.as_secs_f64();
    run.p50_us = percentile(&latencies, 0.50) / 1e3;
    run.p99_us = percentile(&latencies, 0.99) / 1e3;
    run.errors = errors;
    run.per_proxy_cpu_sec = run
        .proxy_cpu_secs
        .filter(|c| *c > 0.0)
        .map(|c| run.completed as f64 / c);
}

/// `workers` concurrent loops of: new TCP connection, full mTLS handshake, one transaction,
/// close; for `window`.
async fn handshakes(
    ep: &Endpoint,
    workers: usize,
    window: Duration,
    watch: Watch,
    errors: &Arc<Errors>,
) -> Run {
    let errors_before = errors.count();
    let expected: Arc<[u8]> = expected_response().into();
    let meter = watch.meter();
    let deadline = meter.t0 + window;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (ep, expected, errors) = (ep.clone(), expected.clone(), errors.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 12);
            loop {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                let once = async {
                    let mut c = connect(&ep).await?;
                    transact(&mut c, &expected).await
                };
                if let Err(e) = once.await {
                    errors.record("handshake + transaction", format!("{e:#}"));
                    break;
                }
                let end = Instant::now();
                if end > deadline {
                    break;
                }
                latencies.push((end - start).as_nanos() as u64);
            }
            latencies
        });
    }
    let rss = watch.sample_rss_until(deadline).await;
    let mut run = watch.finish(
        &meter,
        Run {
            concurrency: workers,
            secs: window.as_secs_f64(),
            proxy_rss_kib: rss,
            ..Run::default()
        },
    );
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(l) => latencies.extend(l),
            Err(e) => errors.record("handshake task", e),
        }
    }
    summarize(&mut run, latencies, window, errors.count() - errors_before);
    run
}

/// Memory of the proxy with `n` idle mTLS sessions, each having done one transaction.
#[derive(Clone, Debug, Default, Serialize)]
struct IdleSessions {
    sessions: usize,
    rss_before_kib: Option<u64>,
    rss_with_sessions_kib: Option<u64>,
    kib_per_session: Option<f64>,
    errors: u64,
}

/// `settle`: the pause before each RSS reading.
async fn idle_sessions(
    ep: &Endpoint,
    n: usize,
    proxy: Option<u32>,
    settle: Duration,
    errors: &Errors,
) -> IdleSessions {
    let expected: Arc<[u8]> = expected_response().into();
    tokio::time::sleep(settle).await;
    let before = proxy.and_then(rss_kib);
    let mut tasks = JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    for _ in 0..n {
        let (ep, expected, limit) = (ep.clone(), expected.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let mut c = connect(&ep).await?;
            transact(&mut c, &expected).await?;
            Ok::<_, anyhow::Error>(c)
        });
    }
    let mut open = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(c)) => open.push(c),
            Ok(Err(e)) => errors.record("idle session", format!("{e:#}")),
            Err(e) => errors.record("idle session task", e),
        }
    }
    // Let the proxy finish its per-session work (audit events, upstream buffers).
    tokio::time::sleep(settle).await;
    let with = proxy.and_then(rss_kib);
    let result = IdleSessions {
        sessions: open.len(),
        rss_before_kib: before,
        rss_with_sessions_kib: with,
        kib_per_session: match (before, with) {
            (Some(b), Some(w)) if !open.is_empty() => {
                Some((w as f64 - b as f64) / open.len() as f64)
            }
            _ => None,
        },
        errors: errors.count(),
    };
    drop(open);
    result
}

// ---------------------------------------------------------------------------------------------
// Certificates and configuration files

fn make_pki(dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = Ca::generate("ztgate bench CA", 1)?;
    let server = ca.issue_server(
        &CertSpec::new("ztgate bench gateway", 1)
            .with_dns("localhost")
            .with_dns("127.0.0.1"),
    )?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    ztgate::pki::write_files(dir, "gateway", &server)?;
    // HAProxy takes the certificate and its key from one PEM.
    let mut pem = server.cert_pem.clone();
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(server.key_pem.expose());
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("haproxy.pem"))?
        .write_all(pem.as_bytes())?;
    let client = ca.issue_client(&CertSpec::new(CLIENT_CN, 1))?;
    let config = ztgate::tls::client_config(
        ca.cert_pem().as_bytes(),
        Some((
            client.cert_pem.as_bytes(),
            client.key_pem.expose().as_bytes(),
        )),
        TlsVersions {
            tls12: true,
            tls13: true,
        },
    )?;
    let mut config = Arc::unwrap_or_clone(config);
    // Every connection a full handshake with the client certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// ztgate's configuration: one mTLS listener in front of the PLC, the shipped defaults for the
/// service (`upstream_in_flight = 1`), limits raised for the 1,000-session figure, an audit
/// file, and a policy that lets the benchmark's identity read.
fn write_ztgate_config(
    dir: &Path,
    name: &str,
    bind: SocketAddr,
    plc: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("bench.toml"),
        format!(
            r#"[roles]
reader = "the load generator: reads process data"

[[identity]]
match = "{CLIENT_CN}"
roles = ["reader"]

[[rule]]
id = "bench-read"
roles = ["reader"]
services = ["plc"]
[rule.modbus]
functions = ["read_only"]
units = [1]
addresses = ["0-999"]
"#
        ),
    )?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[gateway]
name = "bench-gw"

[tls]
client_ca = "ca.pem"
cert = "gateway.pem"
key = "gateway.key"

[[listener]]
name = "bench"
bind = "{bind}"
tls_versions = ["1.2", "1.3"]
default_service = "plc"

[[service]]
name = "plc"
protocol = "modbus"
upstream = "{plc}"
units = [1]
upstream_in_flight = 1
max_outstanding = 16
max_upstream_connections = 4096
connect_timeout = "3s"
response_timeout = "2s"

[limits]
max_sessions = 4096
max_sessions_per_identity = 4096
idle_timeout = "10m"

[audit]
file = "{name}-audit.jsonl"

[policy]
dir = "policies"
"#
        ),
    )?;
    Ok(path)
}

/// HAProxy as a plant would put it in front of a PLC: TCP mode, mTLS terminated with the same
/// certificates, plaintext to the PLC, one log line per connection (like ztgate's audit).
fn write_haproxy_config(
    dir: &Path,
    name: &str,
    bind: SocketAddr,
    plc: SocketAddr,
    threads: usize,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.cfg"));
    let (pem, ca) = (dir.join("haproxy.pem"), dir.join("ca.pem"));
    std::fs::write(
        &path,
        format!(
            r#"global
    nbthread {threads}
    maxconn 8192
    ssl-default-bind-options ssl-min-ver TLSv1.2
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 3s
    timeout client 10m
    timeout server 10m

frontend modbus_mtls
    bind {bind} ssl crt {pem} ca-file {ca} verify required
    default_backend plc

backend plc
    server plc1 {plc}
"#,
            pem = pem.display(),
            ca = ca.display(),
        ),
    )?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Child processes

struct Spawner<'a> {
    settings: &'a Settings,
    dir: &'a Path,
}

impl Spawner<'_> {
    /// Spawns `program args` (on CPU 1 when pinning and `pinned`), output to `dir/name.log`.
    fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        pinned: bool,
        stdout: Stdio,
    ) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut command = if pinned && self.settings.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(log);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        if let Some(file) = &self.settings.pids_file {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(file)?;
            writeln!(f, "{}", child.id())?;
        }
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            _stdin: stdin,
        })
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    fn plc(&self) -> anyhow::Result<(Proc, SocketAddr)> {
        let mut plc = self.spawn(
            "plc",
            &self.settings.ztgate,
            &["sim-plc", "--bind", "127.0.0.1:0"],
            false,
            Stdio::piped(),
        )?;
        let stdout = plc.child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(READY_WAIT).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!(
                    "ztgate sim-plc did not report READY (got {line:?}): {}",
                    self.log_tail("plc")
                )
            })?;
        Ok((plc, addr))
    }

    /// Waits until `addr` accepts TCP connections.
    fn wait_listening(&self, proc: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        while Instant::now() < deadline {
            if let Err(e) = proc.check_alive() {
                bail!("{e}: {}", self.log_tail(&proc.name));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} not listening on {addr} after {READY_WAIT:?}", proc.name)
    }

    fn ztgate(&self, name: &str, plc: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
        let addr = free_port()?;
        let config = write_ztgate_config(self.dir, name, addr, plc)?;
        let config = config.display().to_string();
        let mut p = self.spawn(
            name,
            &self.settings.ztgate,
            &["run", "--config", &config],
            true,
            Stdio::null(),
        )?;
        self.wait_listening(&mut p, addr)?;
        Ok((p, addr))
    }

    fn haproxy(&self, name: &str, plc: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
        let haproxy = self
            .settings
            .haproxy
            .clone()
            .context("haproxy not found (scripts/bench-load.sh installs it)")?;
        let addr = free_port()?;
        let config =
            write_haproxy_config(self.dir, name, addr, plc, self.settings.proxy_threads())?;
        let check = Command::new(&haproxy)
            .args(["-c", "-q", "-f"])
            .arg(&config)
            .output()?;
        if !check.status.success() {
            bail!(
                "haproxy -c: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let config = config.display().to_string();
        // Its per-connection log lines go to stdout: a file, like ztgate's audit file.
        let log = std::fs::File::create(self.dir.join(format!("{name}-connections.log")))?;
        let mut p = self.spawn(name, &haproxy, &["-db", "-f", &config], true, log.into())?;
        self.wait_listening(&mut p, addr)?;
        Ok((p, addr))
    }

    fn proxy(
        &self,
        target: &str,
        name: &str,
        plc: SocketAddr,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        match target {
            "haproxy" => self.haproxy(name, plc),
            _ => self.ztgate(name, plc),
        }
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default, Serialize)]
struct TargetReport {
    ok: bool,
    /// Protocol version, cipher suite and key exchange the load generator negotiated.
    tls: Option<String>,
    errors: u64,
    first_errors: Vec<String>,
    one_conn: Vec<Run>,
    many_conns: Vec<Run>,
    handshakes: Vec<Run>,
    /// The proxy's RSS after start-up, before any load (KiB).
    rss_idle_kib: Option<u64>,
    idle_sessions: Option<IdleSessions>,
}

#[derive(Serialize)]
struct Medians {
    one_conn_tps: Option<f64>,
    one_conn_p50_us: Option<f64>,
    one_conn_p99_us: Option<f64>,
    many_conns_tps: Option<f64>,
    many_conns_p50_us: Option<f64>,
    many_conns_p99_us: Option<f64>,
    handshakes_per_sec: Option<f64>,
    handshake_p50_ms: Option<f64>,
    handshake_p99_ms: Option<f64>,
    one_conn_tx_per_proxy_cpu_sec: Option<f64>,
    many_conns_tx_per_proxy_cpu_sec: Option<f64>,
    handshakes_per_proxy_cpu_sec: Option<f64>,
    one_conn_proxy_cores: Option<f64>,
    many_conns_proxy_cores: Option<f64>,
    handshakes_proxy_cores: Option<f64>,
    many_conns_client_cores: Option<f64>,
    many_conns_plc_cores: Option<f64>,
    handshakes_client_cores: Option<f64>,
    rss_idle_mib: Option<f64>,
    rss_many_conns_mib: Option<f64>,
    rss_idle_sessions_mib: Option<f64>,
    idle_sessions_kib_per_session: Option<f64>,
}

impl TargetReport {
    fn medians(&self) -> Medians {
        let tps = |r: &Run| Some(r.per_sec);
        let p50 = |r: &Run| Some(r.p50_us);
        let p99 = |r: &Run| Some(r.p99_us);
        let per_cpu = |r: &Run| r.per_proxy_cpu_sec;
        let proxy = |r: &Run| r.proxy_cores;
        let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        Medians {
            one_conn_tps: median_of(&self.one_conn, tps),
            one_conn_p50_us: median_of(&self.one_conn, p50),
            one_conn_p99_us: median_of(&self.one_conn, p99),
            many_conns_tps: median_of(&self.many_conns, tps),
            many_conns_p50_us: median_of(&self.many_conns, p50),
            many_conns_p99_us: median_of(&self.many_conns, p99),
            handshakes_per_sec: median_of(&self.handshakes, tps),
            handshake_p50_ms: median_of(&self.handshakes, p50).map(|u| u / 1e3),
            handshake_p99_ms: median_of(&self.handshakes, p99).map(|u| u / 1e3),
            one_conn_tx_per_proxy_cpu_sec: median_of(&self.one_conn, per_cpu),
            many_conns_tx_per_proxy_cpu_sec: median_of(&self.many_conns, per_cpu),
            handshakes_per_proxy_cpu_sec: median_of(&self.handshakes, per_cpu),
            one_conn_proxy_cores: median_of(&self.one_conn, proxy),
            many_conns_proxy_cores: median_of(&self.many_conns, proxy),
            handshakes_proxy_cores: median_of(&self.handshakes, proxy),
            many_conns_client_cores: median_of(&self.many_conns, |r| r.client_cores),
            many_conns_plc_cores: median_of(&self.many_conns, |r| r.plc_cores),
            handshakes_client_cores: median_of(&self.handshakes, |r| r.client_cores),
            rss_idle_mib: mib(self.rss_idle_kib),
            rss_many_conns_mib: median_of(&self.many_conns, |r| mib(r.proxy_rss_kib)),
            rss_idle_sessions_mib: mib(self
                .idle_sessions
                .as_ref()
                .and_then(|i| i.rss_with_sessions_kib)),
            idle_sessions_kib_per_session: self
                .idle_sessions
                .as_ref()
                .and_then(|i| i.kib_per_session),
        }
    }
}

fn table(settings: &Settings, targets: &[(String, TargetReport)]) -> String {
    let medians: Vec<Medians> = targets.iter().map(|(_, r)| r.medians()).collect();
    let c = settings.conns;
    let h = settings.handshakers;
    let n = settings.idle_sessions;
    type Row<'a> = (String, &'a dyn Fn(&Medians) -> Option<f64>, usize);
    let rows: Vec<Row> = vec![
        ("1 conn: transactions/s".into(), &|m| m.one_conn_tps, 0),
        ("1 conn: latency p50 (µs)".into(), &|m| m.one_conn_p50_us, 0),
        ("1 conn: latency p99 (µs)".into(), &|m| m.one_conn_p99_us, 0),
        (
            format!("{c} conns: transactions/s"),
            &|m| m.many_conns_tps,
            0,
        ),
        (
            format!("{c} conns: latency p50 (µs)"),
            &|m| m.many_conns_p50_us,
            0,
        ),
        (
            format!("{c} conns: latency p99 (µs)"),
            &|m| m.many_conns_p99_us,
            0,
        ),
        (
            format!("handshakes/s ({h} concurrent, +1 read) ¹"),
            &|m| m.handshakes_per_sec,
            0,
        ),
        ("handshake+read p50 (ms)".into(), &|m| m.handshake_p50_ms, 2),
        ("handshake+read p99 (ms)".into(), &|m| m.handshake_p99_ms, 2),
        (
            "proxy CPU (cores), 1 conn".into(),
            &|m| m.one_conn_proxy_cores,
            2,
        ),
        (
            format!("proxy CPU (cores), {c} conns"),
            &|m| m.many_conns_proxy_cores,
            2,
        ),
        (
            "proxy CPU (cores), handshakes".into(),
            &|m| m.handshakes_proxy_cores,
            2,
        ),
        (
            "tx per proxy CPU-s, 1 conn".into(),
            &|m| m.one_conn_tx_per_proxy_cpu_sec,
            0,
        ),
        (
            format!("tx per proxy CPU-s, {c} conns"),
            &|m| m.many_conns_tx_per_proxy_cpu_sec,
            0,
        ),
        (
            "handshakes per proxy CPU-s".into(),
            &|m| m.handshakes_per_proxy_cpu_sec,
            0,
        ),
        (
            format!("load generator CPU (cores), {c} conns"),
            &|m| m.many_conns_client_cores,
            2,
        ),
        (
            format!("PLC CPU (cores), {c} conns"),
            &|m| m.many_conns_plc_cores,
            2,
        ),
        (
            "load generator CPU (cores), handshakes".into(),
            &|m| m.handshakes_client_cores,
            2,
        ),
        ("proxy RSS idle (MiB)".into(), &|m| m.rss_idle_mib, 1),
        (
            format!("proxy RSS, {c} conns (MiB)"),
            &|m| m.rss_many_conns_mib,
            1,
        ),
        (
            format!("proxy RSS, {n} idle sessions (MiB) ²"),
            &|m| m.rss_idle_sessions_mib,
            1,
        ),
        (
            "  RSS per idle session (KiB) ²".into(),
            &|m| m.idle_sessions_kib_per_session,
            1,
        ),
    ];
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:width$}",
        format!("median of {} rounds", settings.rounds)
    );
    for (name, _) in targets {
        let _ = write!(out, "{name:>12}");
    }
    out.push('\n');
    for (label, f, decimals) in &rows {
        let _ = write!(out, "{label:width$}");
        for m in &medians {
            let cell = f(m).map_or("-".to_string(), |v| format!("{v:.decimals$}"));
            let _ = write!(out, "{cell:>12}");
        }
        out.push('\n');
    }
    let _ = write!(out, "{:width$}", "errors");
    for (_, r) in targets {
        let _ = write!(
            out,
            "{:>12}",
            if r.ok {
                r.errors.to_string()
            } else {
                format!("FAIL({})", r.errors)
            }
        );
    }
    out.push('\n');
    for (name, r) in targets {
        if let Some(tls) = &r.tls {
            let _ = writeln!(out, "{:width$}{tls}", format!("negotiated, {name}"));
        }
    }
    let _ = writeln!(
        out,
        "\n¹ direct: new TCP connection + 1 read (no TLS); proxies: new TCP connection + full mTLS \
         handshake with client certificate (no resumption) + 1 read."
    );
    let _ = writeln!(
        out,
        "² a fresh proxy process: RSS with {n} sessions open (each did one read), and (that − RSS \
         before) / {n}."
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let result = if bench { benchmark() } else { smoke() };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("load benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn cores(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| format!("{c:.2}"))
}

fn progress(target: &str, round: usize, what: &str, r: &Run) {
    eprintln!(
        "  round {round} {target:<8} {what:<10} {:>8.0}/s  p50 {:>6.0} µs  p99 {:>6.0} µs  cores: proxy {:>4} PLC {:>4} client {:>4} machine {:>4} (steal {:>4})  errors {}",
        r.per_sec,
        r.p50_us,
        r.p99_us,
        cores(r.proxy_cores),
        cores(r.plc_cores),
        cores(r.client_cores),
        cores(r.machine_busy_cores),
        cores(r.steal_cores),
        r.errors
    );
}

/// The real benchmark; `Ok(false)` when a target failed to serve.
fn benchmark() -> anyhow::Result<bool> {
    let settings = Settings::from_env()?;
    if settings.pin {
        pin_self_to_cpu0()?;
    }
    if let Some(limit) = open_files_limit() {
        let need = 3 * settings.idle_sessions as u64 + 1024;
        if limit < need {
            eprintln!(
                "warning: open files limit {limit} < {need}: raise `ulimit -n` (the script does)"
            );
        }
    }
    let temp;
    let dir = match &settings.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("ztgate-bench-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let tls = make_pki(&dir)?;
    let spawner = Spawner {
        settings: &settings,
        dir: &dir,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let (mut plc, plc_addr) = spawner.plc()?;
    eprintln!(
        "load: PLC (ztgate sim-plc) on {plc_addr}; {} rounds of {:?} windows; {} conns; {} handshakers; {}",
        settings.rounds,
        settings.window,
        settings.conns,
        settings.handshakers,
        if settings.pin {
            "load generator + PLC on CPU 0, proxy on CPU 1"
        } else {
            "unpinned"
        }
    );

    // Start every proxy once; they serve all rounds.
    let mut reports: Vec<(String, TargetReport)> = Vec::new();
    let mut procs: Vec<Option<Proc>> = Vec::new();
    let mut endpoints: Vec<Option<Endpoint>> = Vec::new();
    let mut errors: Vec<Arc<Errors>> = Vec::new();
    for target in &settings.targets {
        let mut report = TargetReport {
            ok: true,
            ..TargetReport::default()
        };
        let errs = Arc::new(Errors::default());
        let (proc, endpoint) = if target == "direct" {
            (
                None,
                Some(Endpoint {
                    addr: plc_addr,
                    tls: None,
                }),
            )
        } else {
            match spawner.proxy(target, target, plc_addr) {
                Ok((p, addr)) => (
                    Some(p),
                    Some(Endpoint {
                        addr,
                        tls: Some(tls.clone()),
                    }),
                ),
                Err(e) => {
                    report.ok = false;
                    errs.record("start", format!("{e:#}"));
                    (None, None)
                }
            }
        };
        reports.push((target.clone(), report));
        procs.push(proc);
        endpoints.push(endpoint);
        errors.push(errs);
    }
    std::thread::sleep(Duration::from_millis(300));
    for ((_, report), proc) in reports.iter_mut().zip(&procs) {
        report.rss_idle_kib = proc.as_ref().and_then(|p| rss_kib(p.pid()));
    }
    for (((_, report), ep), errs) in reports.iter_mut().zip(&endpoints).zip(&errors) {
        if let Some(ep) = ep {
            match rt.block_on(negotiated(ep)) {
                Ok(t) => report.tls = Some(t),
                Err(e) => errs.record("first connection", format!("{e:#}")),
            }
        }
    }

    for round in 1..=settings.rounds {
        for i in 0..reports.len() {
            let Some(ep) = endpoints[i].clone() else {
                continue;
            };
            let name = reports[i].0.clone();
            let watch = Watch {
                proxy: procs[i].as_ref().map(Proc::pid),
                plc: Some(plc.pid()),
                clk_tck: settings.clk_tck,
            };
            let errs = errors[i].clone();
            let (one, many, hs) = rt.block_on(async {
                let one = transactions(&ep, 1, settings.window, watch, &errs).await;
                let many = transactions(&ep, settings.conns, settings.window, watch, &errs).await;
                let hs = handshakes(&ep, settings.handshakers, settings.window, watch, &errs).await;
                (one, many, hs)
            });
            progress(&name, round, "1 conn", &one);
            progress(&name, round, &format!("{} conns", settings.conns), &many);
            progress(&name, round, "handshakes", &hs);
            let report = &mut reports[i].1;
            report.one_conn.push(one);
            report.many_conns.push(many);
            report.handshakes.push(hs);
            if let Some(Err(e)) = procs[i].as_mut().map(Proc::check_alive) {
                errs.record("proxy", e);
                report.ok = false;
                endpoints[i] = None;
            }
        }
    }
    plc.check_alive()?;
    // Free the proxies' memory and CPU before the memory figure.
    procs.clear();

    if settings.idle_sessions > 0 {
        for i in 0..reports.len() {
            let name = reports[i].0.clone();
            if name == "direct" || endpoints[i].is_none() {
                continue;
            }
            let errs = errors[i].clone();
            let idle_name = format!("{name}-idle");
            match spawner.proxy(&name, &idle_name, plc_addr) {
                Ok((mut p, addr)) => {
                    let ep = Endpoint {
                        addr,
                        tls: Some(tls.clone()),
                    };
                    let idle = rt.block_on(idle_sessions(
                        &ep,
                        settings.idle_sessions,
                        Some(p.pid()),
                        Duration::from_secs(1),
                        &errs,
                    ));
                    eprintln!(
                        "  {name:<8} {} idle sessions: RSS {:?} → {:?} KiB ({:.1} KiB/session)",
                        idle.sessions,
                        idle.rss_before_kib,
                        idle.rss_with_sessions_kib,
                        idle.kib_per_session.unwrap_or(f64::NAN)
                    );
                    if let Err(e) = p.check_alive() {
                        errs.record("proxy", e);
                        reports[i].1.ok = false;
                    }
                    reports[i].1.idle_sessions = Some(idle);
                }
                Err(e) => {
                    errs.record("start for idle sessions", format!("{e:#}"));
                    reports[i].1.ok = false;
                }
            }
        }
    }
    plc.check_alive()?;
    drop(plc);

    let mut all_ok = true;
    for ((_, report), errs) in reports.iter_mut().zip(&errors) {
        report.errors = errs.count();
        report.first_errors = errs.first.lock().unwrap_or_else(|p| p.into_inner()).clone();
        report.ok &= report.errors == 0;
        all_ok &= report.ok;
    }

    let text = table(&settings, &reports);
    println!("{text}");
    for (name, r) in &reports {
        for e in &r.first_errors {
            println!("{name}: {e}");
        }
    }
    let haproxy_version = settings.haproxy.as_ref().and_then(|h| {
        let out = Command::new(h).arg("-v").output().ok()?;
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .to_string(),
        )
    });
    let json = serde_json::json!({
        "settings": {
            "rounds": settings.rounds,
            "window_secs": settings.window.as_secs_f64(),
            "conns": settings.conns,
            "handshakers": settings.handshakers,
            "idle_sessions": settings.idle_sessions,
            "request": "FC3 read 10 holding registers, unit 1, address 0",
            "cpu_split": if settings.pin {
                "load generator (tokio, 1 worker) and PLC (ztgate sim-plc) on CPU 0; the proxy under test alone on CPU 1 (ztgate: 1 tokio worker; HAProxy: nbthread 1)"
            } else {
                "unpinned: load generator 1 tokio worker; proxies one thread per CPU"
            },
            "proxy_threads": settings.proxy_threads(),
            "haproxy": haproxy_version,
        },
        "ok": all_ok,
        "medians": reports.iter().map(|(n, r)| (n.clone(), r.medians())).collect::<std::collections::BTreeMap<_, _>>(),
        "targets": reports.iter().map(|(n, r)| (n.clone(), r)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    if let Some(parent) = settings.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&settings.out, serde_json::to_string_pretty(&json)?)?;
    println!("JSON: {}", settings.out.display());
    if !all_ok {
        eprintln!("load: a target failed to serve (see the errors above)");
    }
    Ok(all_ok)
}

/// What `cargo test --all-targets` runs: the load generator for a moment against an in-process
/// PLC and gateway (no child processes, no HAProxy).
fn smoke() -> anyhow::Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("ztgate-bench-smoke-")
        .tempdir()?;
    let tls = make_pki(dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let plc = ztgate::demo::plc::Plc::start("127.0.0.1:0".parse()?).await?;
        let config = write_ztgate_config(dir.path(), "ztgate", "127.0.0.1:0".parse()?, plc.addr)?;
        let config = ztgate::config::Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let gateway = ztgate::gateway::Gateway::start(config).await?;
        let gateway_addr = gateway.address("bench").context("no listener")?;
        let window = Duration::from_millis(200);
        let watch = Watch {
            proxy: None,
            plc: None,
            clk_tck: 100.0,
        };
        let endpoints = [
            (
                "direct",
                Endpoint {
                    addr: plc.addr,
                    tls: None,
                },
            ),
            (
                "ztgate",
                Endpoint {
                    addr: gateway_addr,
                    tls: Some(tls),
                },
            ),
        ];
        for (name, ep) in endpoints {
            let errors = Arc::new(Errors::default());
            let runs = [
                transactions(&ep, 1, window, watch, &errors).await,
                transactions(&ep, 4, window, watch, &errors).await,
                handshakes(&ep, 2, window, watch, &errors).await,
            ];
            let idle = idle_sessions(&ep, 4, None, Duration::ZERO, &errors).await;
            if errors.count() > 0 || runs.iter().any(|r| r.completed == 0) || idle.sessions != 4 {
                let first = errors
                    .first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                bail!("smoke run against {name} failed: {runs:?} {first:?}");
            }
        }
        gateway.shutdown().await;
        println!("load: smoke run ok (the benchmark: scripts/bench-load.sh)");
        Ok(true)
    })
}
