//! End-to-end MQTT load benchmark: one publisher reaching the same Mosquitto three ways,
//! measured in one run with the targets alternating (per matrix cell: direct, ztgate,
//! mosquitto-tls; the whole matrix once per round), the median of the rounds reported.
//!
//! - `direct`: plaintext MQTT to Mosquitto (the floor);
//! - `ztgate`: `ztgate run` with full inspection (mTLS, every PUBLISH decided by the policy,
//!   audit file), plaintext to Mosquitto;
//! - `mosquitto-tls`: Mosquitto's own mTLS listener ("blind TLS": the cost of TLS alone).
//!
//! A subscriber connected directly to Mosquitto (plaintext) counts what is delivered and the
//! publish → deliver latency from a timestamp in the payload (one monotonic clock: publisher
//! and subscriber are tasks of this process).
//!
//! Run it with `scripts/bench-mqtt.sh` (builds, cleans up); the script documents the metrics,
//! the settings (`BENCH_*` variables), the Mosquitto configuration and the CPU split.
//!
//! Modes: with `--bench` (what `cargo bench` and the script pass) this is the benchmark: it
//! spawns `mosquitto` and `ztgate run` as child processes, prints a table and writes JSON
//! (`BENCH_OUT`, default target/bench-mqtt.json). Without `--bench` (as run by `cargo test
//! --all-targets`) it is a smoke run of about a second against a spawned Mosquitto and an
//! in-process gateway (v5 QoS 0 and 1, 3.1.1 QoS 1; every QoS 1 and every low-rate message
//! must arrive); it fails (never passes silently) when Mosquitto is not installed.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use ztgate::config::TlsVersions;
use ztgate::pki::{Ca, CertSpec};
use ztgate::protocol::mqtt::{self, Packet, PacketType, QoS, Version};

#[path = "support/mod.rs"]
mod support;
use support::{CpuMeter, Proc, env_or, median_of, percentile, pin_self_to_cpu0, rss_kib};

/// The publisher's certificate CN, which is also its MQTT client id (`client_id = "require"`).
const CLIENT_CN: &str = "bench-client";
/// The subscriber's client id (it connects to Mosquitto directly).
const SUBSCRIBER_ID: &str = "bench-subscriber";
/// Longest a connect (TCP, TLS, CONNECT/CONNACK, SUBSCRIBE/SUBACK) may take.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Longest a child process may take to be ready.
const READY_WAIT: Duration = Duration::from_secs(10);
/// Longest the publisher waits for a PUBACK, or for a write to complete.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// After the publisher is done: the subscriber stops once it has everything, or after this
/// long without a delivery (QoS 0 loss), and at the latest after `DRAIN_MAX`.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// QoS 0: PUBLISHes are written in batches of about this many bytes (one write call, one TLS
/// record), as a buffered client library would.
const BATCH_BYTES: usize = 16 * 1024;
/// Keep alive in CONNECT; no connection of the benchmark lives that long idle.
const KEEP_ALIVE: u16 = 60;
/// Largest packet the benchmark's clients accept.
const MAX_PACKET: usize = 1 << 20;
/// Payload: 8-byte send timestamp (ns on [`now_ns`]'s clock), 8-byte sequence number, filler.
const PAYLOAD_HEADER: usize = 16;
/// Mosquitto settings (see scripts/bench-mqtt.sh); `BENCH_MOSQUITTO_MAX_QUEUED` overrides the
/// first (Mosquitto's default is 1000).
const MOSQUITTO_MAX_QUEUED: u64 = 1_000_000;
const MOSQUITTO_MAX_INFLIGHT: u16 = 20;

/// Nanoseconds since the first call: the clock publisher and subscriber share.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// Settings

const TARGETS: [&str; 3] = ["direct", "ztgate", "mosquitto-tls"];

struct Settings {
    rounds: usize,
    /// Length of every saturated window.
    window: Duration,
    /// The low-rate latency phase: one PUBLISH every `latency_interval` for `latency_window`.
    latency_window: Duration,
    latency_interval: Duration,
    /// QoS 1 PUBLISHes in flight at most (further bounded by the receive maximum in CONNACK).
    inflight: u16,
    versions: Vec<Version>,
    qos: Vec<QoS>,
    payloads: Vec<usize>,
    targets: Vec<String>,
    /// Load generator and Mosquitto on CPU 0, ztgate alone on CPU 1.
    pin: bool,
    out: PathBuf,
    /// Working directory (certificates, configs, logs); a temp dir when unset.
    dir: Option<PathBuf>,
    /// Every child's PID is appended here, for the script's clean-up trap.
    pids_file: Option<PathBuf>,
    ztgate: PathBuf,
    mosquitto: Option<PathBuf>,
    mosquitto_max_queued: u64,
    clk_tck: f64,
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn find_mosquitto() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BENCH_MOSQUITTO") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join("mosquitto"))
        .find(|p| p.is_file())
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut versions = Vec::new();
        for v in env_list("BENCH_VERSIONS", "5") {
            versions.push(match v.as_str() {
                "5" | "5.0" => Version::V5,
                "3.1.1" | "311" | "4" => Version::V311,
                other => bail!("BENCH_VERSIONS: unknown MQTT version {other:?} (5, 3.1.1)"),
            });
        }
        let mut qos = Vec::new();
        for q in env_list("BENCH_QOS", "0,1") {
            qos.push(match q.as_str() {
                "0" => QoS::AtMostOnce,
                "1" => QoS::AtLeastOnce,
                other => bail!("BENCH_QOS: {other:?} (0 or 1)"),
            });
        }
        let mut payloads = Vec::new();
        for p in env_list("BENCH_PAYLOADS", "64,1024") {
            let n: usize = p
                .parse()
                .map_err(|e| anyhow::anyhow!("BENCH_PAYLOADS {p}: {e}"))?;
            if !(PAYLOAD_HEADER..=65536).contains(&n) {
                bail!("BENCH_PAYLOADS: {n} outside {PAYLOAD_HEADER}..=65536 bytes");
            }
            payloads.push(n);
        }
        let settings = Settings {
            rounds: env_or("BENCH_ROUNDS", 3usize)?.clamp(1, 100),
            window: Duration::from_secs_f64(env_or("BENCH_SECS", 5.0f64)?.clamp(0.1, 60.0)),
            latency_window: Duration::from_secs_f64(
                env_or("BENCH_LATENCY_SECS", 2.0f64)?.clamp(0.0, 60.0),
            ),
            latency_interval: Duration::from_micros(
                env_or("BENCH_LATENCY_INTERVAL_US", 1000u64)?.clamp(10, 1_000_000),
            ),
            inflight: env_or("BENCH_INFLIGHT", 20u16)?.max(1),
            versions,
            qos,
            payloads,
            targets: env_list("BENCH_TARGETS", "direct,ztgate,mosquitto-tls"),
            pin: env_or("BENCH_PIN", 1u8)? != 0 && cpus >= 2,
            out: std::env::var_os("BENCH_OUT").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-mqtt.json"),
                PathBuf::from,
            ),
            dir: std::env::var_os("BENCH_DIR").map(PathBuf::from),
            pids_file: std::env::var_os("BENCH_PIDS_FILE").map(PathBuf::from),
            ztgate: std::env::var_os("BENCH_ZTGATE").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_ztgate")),
                PathBuf::from,
            ),
            mosquitto: find_mosquitto(),
            mosquitto_max_queued: env_or("BENCH_MOSQUITTO_MAX_QUEUED", MOSQUITTO_MAX_QUEUED)?,
            clk_tck: env_or("BENCH_CLK_TCK", 100.0f64)?,
        };
        for t in &settings.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "BENCH_TARGETS: unknown target {t:?} ({})",
                    TARGETS.join(", ")
                );
            }
        }
        if settings.versions.is_empty() || settings.qos.is_empty() || settings.payloads.is_empty() {
            bail!("BENCH_VERSIONS, BENCH_QOS and BENCH_PAYLOADS must not be empty");
        }
        Ok(settings)
    }

    fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &version in &self.versions {
            for &qos in &self.qos {
                for &payload in &self.payloads {
                    cells.push(Cell {
                        version,
                        qos,
                        payload,
                    });
                }
            }
        }
        cells
    }
}

/// One point of the matrix.
#[derive(Clone, Copy, Debug)]
struct Cell {
    version: Version,
    qos: QoS,
    payload: usize,
}

impl Cell {
    fn label(&self) -> String {
        let version = match self.version {
            Version::V5 => "v5",
            Version::V311 => "v3.1.1",
        };
        let size = if self.payload % 1024 == 0 {
            format!("{} KiB", self.payload / 1024)
        } else {
            format!("{} B", self.payload)
        };
        format!("{version} QoS {} {size}", self.qos.as_u8())
    }

    /// A topic of its own per phase, so nothing from an earlier phase can be counted.
    fn topic(&self, target: &str, round: usize, phase: &str) -> String {
        let v = match self.version {
            Version::V5 => "v5",
            Version::V311 => "v311",
        };
        format!(
            "bench/{CLIENT_CN}/{target}/r{round}/{v}-q{}-{}/{phase}",
            self.qos.as_u8(),
            self.payload
        )
    }
}

// ---------------------------------------------------------------------------------------------
// /proc accounting

/// The processes to account for a window.
#[derive(Clone, Copy)]
struct Watch {
    gateway: Option<u32>,
    broker: Option<u32>,
    clk_tck: f64,
}

impl Watch {
    fn meter(&self) -> CpuMeter {
        CpuMeter::start(
            vec![self.gateway, self.broker, Some(std::process::id())],
            self.clk_tck,
        )
    }

    /// Sleeps until `deadline`, sampling the gateway's RSS; returns the largest sample.
    async fn sample_rss_until(&self, deadline: Instant) -> Option<u64> {
        let mut max = None;
        loop {
            if let Some(pid) = self.gateway {
                max = max.max(rss_kib(pid));
            }
            let now = Instant::now();
            if now >= deadline {
                return max;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
        }
    }

    fn finish(&self, meter: &CpuMeter, run: &mut Run) {
        let secs = meter.t0.elapsed().as_secs_f64();
        let cpu = meter.stop();
        let cores = |c: Option<f64>| c.map(|c| c / secs);
        run.gateway_cpu_secs = cpu[0];
        run.gateway_cores = cores(cpu[0]);
        run.broker_cores = cores(cpu[1]);
        run.client_cores = cores(cpu[2]);
        if let Some((busy, steal)) = meter.machine() {
            run.machine_busy_cores = Some(busy / secs);
            run.steal_cores = Some(steal / secs);
            let ours: f64 = cpu.iter().flatten().sum();
            run.other_cores = Some(((busy - ours) / secs).max(0.0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw MQTT client (hand-built packets, our codec to read the broker's)

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how to connect.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    /// mTLS with the benchmark's client certificate; `None`: plaintext.
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let digit = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(digit);
            return;
        }
        out.push(digit | 0x80);
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    push_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT, clean start, no will, no credentials, no properties.
fn connect_packet(version: Version, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(&mut body, "MQTT");
    body.push(version.level());
    body.push(0x02);
    body.extend_from_slice(&KEEP_ALIVE.to_be_bytes());
    if version == Version::V5 {
        body.push(0);
    }
    push_str(&mut body, client_id);
    packet(0x10, &body)
}

fn subscribe_packet(version: Version, packet_id: u16, filter: &str, qos: QoS) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version == Version::V5 {
        body.push(0);
    }
    push_str(&mut body, filter);
    body.push(qos.as_u8());
    packet(0x82, &body)
}

/// Appends one PUBLISH whose payload carries the send time and `seq`.
fn push_publish(
    out: &mut Vec<u8>,
    version: Version,
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload: usize,
    seq: u64,
) {
    let id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let props = usize::from(version == Version::V5);
    out.push(0x30 | (qos.as_u8() << 1));
    push_varint(out, 2 + topic.len() + id + props + payload);
    push_str(out, topic);
    if id > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if props > 0 {
        out.push(0);
    }
    out.extend_from_slice(&now_ns().to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(out.len() + payload - PAYLOAD_HEADER, b'x');
}

/// One MQTT connection: the stream and what was read from it but not yet taken.
struct Conn {
    stream: Box<dyn Io>,
    buf: BytesMut,
    version: Version,
}

impl Conn {
    /// TCP (+ mTLS), CONNECT, CONNACK (success required).
    async fn open(
        ep: &Endpoint,
        version: Version,
        client_id: &str,
    ) -> anyhow::Result<(Conn, mqtt::Connack)> {
        let open = async {
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
            let mut conn = Conn {
                stream,
                buf: BytesMut::with_capacity(64 * 1024),
                version,
            };
            conn.stream
                .write_all(&connect_packet(version, client_id))
                .await?;
            let p = conn.next_packet().await?;
            match mqtt::decode(&p, version, false)? {
                Packet::Connack(c) if c.reason == 0 => Ok((conn, c)),
                Packet::Connack(c) => bail!("CONNACK reason {:#04x}", c.reason),
                other => bail!("{} instead of CONNACK", other.kind().name()),
            }
        };
        tokio::time::timeout(CONNECT_WAIT, open)
            .await
            .context("connect timed out")?
    }

    /// SUBSCRIBE to one filter, SUBACK granting `qos` required.
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let subscribe = async {
            self.stream
                .write_all(&subscribe_packet(self.version, 1, filter, qos))
                .await?;
            let p = self.next_packet().await?;
            match mqtt::decode(&p, self.version, false)? {
                Packet::Suback(s) if s.reason_codes == [qos.as_u8()] => Ok(()),
                Packet::Suback(s) => bail!("SUBACK codes {:02x?}", s.reason_codes),
                other => bail!("{} instead of SUBACK", other.kind().name()),
            }
        };
        tokio::time::timeout(CONNECT_WAIT, subscribe)
            .await
            .context("subscribe timed out")?
    }

    /// The next whole packet already read, if any.
    fn take(&mut self) -> anyhow::Result<Option<BytesMut>> {
        match mqtt::packet_len(&self.buf, MAX_PACKET)? {
            Some(n) if self.buf.len() >= n => Ok(Some(self.buf.split_to(n))),
            _ => Ok(None),
        }
    }

    /// Reads more bytes; an error on EOF. Cancel-safe (used in `select!`).
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(64 * 1024);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => bail!("connection closed by the peer"),
            Ok(_) => Ok(()),
            Err(e) => Err(e).context("read"),
        }
    }

    /// The next packet, reading as needed (the caller bounds the wait).
    async fn next_packet(&mut self) -> anyhow::Result<BytesMut> {
        loop {
            if let Some(p) = self.take()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(ACK_WAIT, self.stream.write_all(bytes))
            .await
            .context("write blocked")?
            .context("write")
    }

    /// DISCONNECT (normal) and close, bounded.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.stream.write_all(&[0xE0, 0]).await?;
            self.stream.shutdown().await
        })
        .await;
    }
}

/// What the load generator and the target negotiate, checked with a CONNECT/CONNACK.
async fn negotiated(ep: &Endpoint) -> anyhow::Result<String> {
    let Some(config) = &ep.tls else {
        return Ok("plaintext".to_string());
    };
    let tcp = TcpStream::connect(ep.addr).await?;
    let tls = tokio::time::timeout(
        CONNECT_WAIT,
        TlsConnector::from(config.clone()).connect(ServerName::IpAddress(ep.addr.ip().into()), tcp),
    )
    .await
    .context("TLS handshake timed out")??;
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
    drop(tls);
    let (conn, _) = Conn::open(ep, Version::V5, CLIENT_CN).await?;
    conn.close().await;
    Ok(text)
}

/// Packet ids of QoS 1 PUBLISHes awaiting their PUBACK.
struct InFlight {
    used: Vec<bool>,
    count: u16,
    next: u16,
}

impl InFlight {
    fn new() -> InFlight {
        InFlight {
            used: vec![false; 65536],
            count: 0,
            next: 1,
        }
    }

    /// A free packet id (the caller keeps `count` below 65535).
    fn take(&mut self) -> u16 {
        for _ in 0..u16::MAX {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            if !self.used[usize::from(id)] {
                self.used[usize::from(id)] = true;
                self.count += 1;
                return id;
            }
        }
        unreachable!("more than 65534 packet ids in flight")
    }

    fn release(&mut self, id: u16) -> bool {
        let slot = &mut self.used[usize::from(id)];
        let was = *slot;
        *slot = false;
        if was {
            self.count -= 1;
        }
        was
    }
}

/// What the publisher sends.
struct Plan {
    version: Version,
    qos: QoS,
    topic: String,
    payload: usize,
    /// Publishing stops here.
    end: Instant,
    /// `None`: as fast as flow control allows; `Some`: one PUBLISH per interval.
    pace: Option<Duration>,
    /// QoS 1 PUBLISHes in flight at most.
    window: u16,
    /// PUBLISHes at most (the smoke run's bound on what a QoS 0 burst leaves queued).
    limit: u64,
}

#[derive(Default)]
struct Published {
    /// PUBLISHes written (QoS 1: each one PUBACKed unless `error`).
    sent: u64,
    acked: u64,
    /// Paced phase: ticks skipped because the QoS 1 window was full.
    skipped: u64,
    error: Option<anyhow::Error>,
}

/// Takes every PUBACK read so far.
fn take_acks(conn: &mut Conn, inflight: &mut InFlight) -> anyhow::Result<u64> {
    let mut n = 0;
    while let Some(p) = conn.take()? {
        match mqtt::decode(&p, conn.version, false)? {
            Packet::Puback(a) => {
                if !inflight.release(a.packet_id) {
                    bail!("PUBACK for packet id {}, not in flight", a.packet_id);
                }
                match a.reason {
                    0 => n += 1,
                    0x10 => bail!("PUBACK 0x10: no matching subscribers"),
                    r => bail!("PUBACK reason {r:#04x}"),
                }
            }
            Packet::Disconnect { reason } => bail!("DISCONNECT {reason:#04x} from the server"),
            other => bail!("unexpected {} from the server", other.kind().name()),
        }
    }
    Ok(n)
}

async fn publisher(conn: &mut Conn, plan: &Plan) -> Published {
    let mut out = Published::default();
    if let Err(e) = publish_loop(conn, plan, &mut out).await {
        out.error = Some(e);
    }
    out
}

async fn publish_loop(conn: &mut Conn, plan: &Plan, out: &mut Published) -> anyhow::Result<()> {
    let qos1 = plan.qos == QoS::AtLeastOnce;
    let mut inflight = InFlight::new();
    let mut buf = Vec::with_capacity(BATCH_BYTES + plan.payload + 256);
    let mut tick = plan.pace.map(|d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        i
    });
    while Instant::now() < plan.end && out.sent < plan.limit {
        buf.clear();
        match &mut tick {
            None if !qos1 => {
                while buf.len() < BATCH_BYTES && out.sent < plan.limit {
                    push_publish(
                        &mut buf,
                        plan.version,
                        &plan.topic,
                        plan.qos,
                        0,
                        plan.payload,
                        out.sent,
                    );
                    out.sent += 1;
                }
                conn.write(&buf).await?;
            }
            None => {
                while inflight.count < plan.window && out.sent < plan.limit {
                    let id = inflight.take();
                    push_publish(
                        &mut buf,
                        plan.version,
                        &plan.topic,
                        plan.qos,
                        id,
                        plan.payload,
                        out.sent,
                    );
                    out.sent += 1;
                }
                if !buf.is_empty() {
                    conn.write(&buf).await?;
                }
                tokio::time::timeout(ACK_WAIT, conn.fill())
                    .await
                    .context("no PUBACK")??;
                out.acked += take_acks(conn, &mut inflight)?;
            }
            Some(tick) => {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() >= plan.end {
                            break;
                        }
                        if qos1 && inflight.count >= plan.window {
                            out.skipped += 1;
                            continue;
                        }
                        let id = if qos1 { inflight.take() } else { 0 };
                        push_publish(&mut buf, plan.version, &plan.topic, plan.qos, id, plan.payload, out.sent);
                        out.sent += 1;
                        conn.write(&buf).await?;
                    }
                    read = conn.fill(), if qos1 => {
                        read?;
                        out.acked += take_acks(conn, &mut inflight)?;
                    }
                }
            }
        }
    }
    // The last PUBACKs.
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    while inflight.count > 0 {
        tokio::time::timeout_at(deadline, conn.fill())
            .await
            .context("PUBACKs missing after the window")??;
        out.acked += take_acks(conn, &mut inflight)?;
    }
    Ok(())
}

#[derive(Default)]
struct Delivered {
    count: u64,
    /// Received before the end of the publishing window.
    in_window: u64,
    /// Publish → deliver, ns.
    latencies: Vec<u64>,
    error: Option<anyhow::Error>,
}

/// Counts deliveries (acknowledging QoS 1) until it has the `total` the publisher reports on
/// `total_rx`, or nothing came for [`DRAIN_QUIET`] after that report, or `hard_end`.
async fn subscriber(
    mut conn: Conn,
    window_end: Instant,
    hard_end: Instant,
    mut total_rx: oneshot::Receiver<u64>,
) -> (Delivered, Conn) {
    let mut d = Delivered {
        latencies: Vec::with_capacity(1 << 16),
        ..Delivered::default()
    };
    let mut total: Option<u64> = None;
    let mut last = Instant::now();
    let mut acks = Vec::new();
    loop {
        if total.is_some_and(|t| d.count >= t) {
            break;
        }
        let wake = match total {
            Some(_) => (last + DRAIN_QUIET).min(hard_end),
            None => hard_end,
        };
        let step: anyhow::Result<bool> = tokio::select! {
            read = conn.fill() => match read {
                Err(e) => Err(e),
                Ok(()) => {
                    let now = Instant::now();
                    let now_ns = now_ns();
                    last = now;
                    acks.clear();
                    let mut result = Ok(true);
                    loop {
                        let p = match conn.take() {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => { result = Err(e); break; }
                        };
                        match mqtt::decode(&p, conn.version, false) {
                            Ok(Packet::Publish(p)) => {
                                let ts = p.payload.get(..8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
                                d.latencies.push(now_ns.saturating_sub(ts));
                                d.count += 1;
                                if now <= window_end {
                                    d.in_window += 1;
                                }
                                if let Some(id) = p.packet_id {
                                    acks.extend(mqtt::ack(PacketType::Puback, conn.version, id, 0));
                                }
                            }
                            Ok(other) => { result = Err(anyhow::anyhow!("unexpected {} from the broker", other.kind().name())); break; }
                            Err(e) => { result = Err(e.into()); break; }
                        }
                    }
                    if result.is_ok() && !acks.is_empty() {
                        let acks = std::mem::take(&mut acks);
                        result = conn.write(&acks).await.map(|()| true);
                    }
                    result
                }
            },
            t = &mut total_rx, if total.is_none() => {
                total = Some(t.unwrap_or(0));
                last = Instant::now();
                Ok(true)
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if total.is_none() {
                    Err(anyhow::anyhow!("the publisher did not finish in time"))
                } else {
                    Ok(false)
                }
            }
        };
        match step {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                d.error = Some(e);
                break;
            }
        }
    }
    (d, conn)
}

// ---------------------------------------------------------------------------------------------
// One measurement

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

    fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Figures of one phase (saturated window or paced latency phase).
#[derive(Clone, Debug, Default, Serialize)]
struct Run {
    secs: f64,
    /// QoS 1 PUBLISHes in flight at most (the setting bounded by the CONNACK's receive maximum).
    window: u16,
    /// PUBLISHes written in the window (QoS 1: each PUBACKed).
    published: u64,
    /// Delivered to the subscriber: in the window, and in all (the drain after it included).
    delivered_in_window: u64,
    delivered: u64,
    published_per_sec: f64,
    /// Deliveries in the window per second.
    delivered_per_sec: f64,
    /// delivered / published (QoS 0 loss shows here).
    ratio: f64,
    /// Publish → deliver over every delivery of the phase.
    p50_us: f64,
    p99_us: f64,
    /// Paced phase: ticks skipped because the QoS 1 window was full.
    skipped: u64,
    errors: u64,
    gateway_cpu_secs: Option<f64>,
    /// CPU in cores (CPU-s per second of the window) of the gateway, Mosquitto, this process.
    gateway_cores: Option<f64>,
    broker_cores: Option<f64>,
    client_cores: Option<f64>,
    machine_busy_cores: Option<f64>,
    steal_cores: Option<f64>,
    /// Busy cores of the machine not used by the gateway, Mosquitto or this process: other
    /// load (the VM is shared) that competed with the benchmark.
    other_cores: Option<f64>,
    /// Published per gateway CPU-second.
    per_gateway_cpu_sec: Option<f64>,
    /// Largest VmRSS of the gateway seen during the window.
    gateway_rss_kib: Option<u64>,
}

enum Mode {
    /// As fast as flow control allows, for this long and at most this many PUBLISHes.
    Saturated(Duration, u64),
    /// One PUBLISH per `interval`.
    Paced { secs: Duration, interval: Duration },
}

/// One phase: subscriber (direct to Mosquitto) and publisher (through `ep`) connected, the
/// publisher run for the phase, the subscriber drained.
#[allow(clippy::too_many_arguments)]
async fn measure(
    ep: &Endpoint,
    broker: SocketAddr,
    cell: Cell,
    topic: String,
    mode: &Mode,
    inflight: u16,
    watch: Watch,
    errors: &Errors,
) -> Run {
    let errors_before = errors.count();
    let setup = async {
        let sub_ep = Endpoint {
            addr: broker,
            tls: None,
        };
        let (mut sub, _) = Conn::open(&sub_ep, cell.version, SUBSCRIBER_ID)
            .await
            .context("subscriber")?;
        sub.subscribe(&topic, cell.qos)
            .await
            .context("subscriber")?;
        let (publ, connack) = Conn::open(ep, cell.version, CLIENT_CN)
            .await
            .context("publisher")?;
        Ok::<_, anyhow::Error>((sub, publ, connack))
    };
    let (sub, mut publ, connack) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            errors.record("connect", format!("{e:#}"));
            return Run {
                errors: errors.count() - errors_before,
                ..Run::default()
            };
        }
    };
    let window = connack
        .properties
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(inflight)
        .max(1);
    let (secs, pace, limit) = match mode {
        Mode::Saturated(secs, limit) => (*secs, None, *limit),
        Mode::Paced { secs, interval } => (*secs, Some(*interval), u64::MAX),
    };
    let meter = watch.meter();
    let end = meter.t0 + secs;
    let (total_tx, total_rx) = oneshot::channel();
    let sub_task = tokio::spawn(subscriber(
        sub,
        end,
        end + 2 * ACK_WAIT + DRAIN_MAX,
        total_rx,
    ));
    let plan = Plan {
        version: cell.version,
        qos: cell.qos,
        topic,
        payload: cell.payload,
        end,
        pace,
        window,
        limit,
    };
    let pub_task = tokio::spawn(async move {
        let p = publisher(&mut publ, &plan).await;
        (p, publ)
    });
    let rss = watch.sample_rss_until(end).await;
    let mut run = Run {
        secs: secs.as_secs_f64(),
        window,
        gateway_rss_kib: rss,
        ..Run::default()
    };
    watch.finish(&meter, &mut run);
    let (published, publ) = match pub_task.await {
        Ok(x) => x,
        Err(e) => {
            errors.record("publisher task", e);
            let _ = total_tx.send(0);
            let _ = sub_task.await;
            run.errors = errors.count() - errors_before;
            return run;
        }
    };
    if let Some(e) = &published.error {
        errors.record("publisher", format!("{e:#}"));
    }
    let _ = total_tx.send(published.sent);
    let (mut delivered, sub) = match sub_task.await {
        Ok(x) => x,
        Err(e) => {
            errors.record("subscriber task", e);
            run.errors = errors.count() - errors_before;
            return run;
        }
    };
    if let Some(e) = &delivered.error {
        errors.record("subscriber", format!("{e:#}"));
    }
    if cell.qos == QoS::AtLeastOnce && published.error.is_none() {
        if published.acked != published.sent {
            errors.record(
                "QoS 1",
                format!(
                    "{} of {} PUBLISHes PUBACKed",
                    published.acked, published.sent
                ),
            );
        } else if delivered.count < published.sent {
            errors.record(
                "QoS 1",
                format!(
                    "{} of {} PUBACKed messages delivered",
                    delivered.count, published.sent
                ),
            );
        }
    }
    publ.close().await;
    sub.close().await;

    delivered.latencies.sort_unstable();
    run.published = published.sent;
    run.skipped = published.skipped;
    run.delivered = delivered.count;
    run.delivered_in_window = delivered.in_window;
    run.published_per_sec = published.sent as f64 / run.secs;
    run.delivered_per_sec = delivered.in_window as f64 / run.secs;
    run.ratio = if published.sent > 0 {
        delivered.count as f64 / published.sent as f64
    } else {
        f64::NAN
    };
    run.p50_us = percentile(&delivered.latencies, 0.50) / 1e3;
    run.p99_us = percentile(&delivered.latencies, 0.99) / 1e3;
    run.per_gateway_cpu_sec = run
        .gateway_cpu_secs
        .filter(|c| *c > 0.0)
        .map(|c| published.sent as f64 / c);
    run.errors = errors.count() - errors_before;
    run
}

// ---------------------------------------------------------------------------------------------
// Certificates and configuration files

/// A throw-away PKI: ca.pem, gateway.pem/.key (also Mosquitto's TLS listener's), and the
/// load generator's client configuration (certificate CN [`CLIENT_CN`]).
fn make_pki(dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = Ca::generate("ztgate bench CA", 1)?;
    let server = ca.issue_server(
        &CertSpec::new("ztgate bench gateway", 1)
            .with_dns("localhost")
            .with_dns("127.0.0.1"),
    )?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    ztgate::pki::write_files(dir, "gateway", &server)?;
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
    Ok(config)
}

/// ztgate in front of Mosquitto: one mTLS listener, one MQTT service (client id = identity),
/// an audit file, and a policy that lets the benchmark's identity publish under
/// `bench/{identity}/#` (QoS ≤ 1, no retain, payload ≤ 4 KiB), checked on every PUBLISH.
fn write_ztgate_config(
    dir: &Path,
    name: &str,
    bind: SocketAddr,
    broker: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("bench.toml"),
        format!(
            r#"[roles]
publisher = "the load generator: publishes its own telemetry"

[[identity]]
match = "{CLIENT_CN}"
roles = ["publisher"]

[[rule]]
id = "bench-publish"
roles = ["publisher"]
services = ["broker"]
[rule.mqtt]
publish = ["bench/{{identity}}/#"]
max_qos = 1
retain = false
max_payload = 4096
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
default_service = "broker"

[[service]]
name = "broker"
protocol = "mqtt"
upstream = "{broker}"
client_id = "require"
max_upstream_connections = 64
connect_timeout = "3s"

[limits]
max_sessions = 256
max_sessions_per_identity = 64
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

/// Mosquitto's configuration (documented in scripts/bench-mqtt.sh).
fn mosquitto_config(port: u16, tls: Option<(u16, &Path)>, max_queued: u64) -> String {
    let mut text = format!(
        "# written by benches/mqtt_load.rs\n\
         persistence false\n\
         allow_anonymous true\n\
         max_queued_messages {max_queued}\n\
         max_inflight_messages {MOSQUITTO_MAX_INFLIGHT}\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         listener {port} 127.0.0.1\n"
    );
    // Started as root, Mosquitto switches to the user "mosquitto", which cannot read the
    // certificates in our private temp dir: stay who we are.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        text.push_str("user root\n");
    }
    if let Some((tls_port, dir)) = tls {
        let _ = write!(
            text,
            "listener {tls_port} 127.0.0.1\n\
             cafile {}\n\
             certfile {}\n\
             keyfile {}\n\
             require_certificate true\n",
            dir.join("ca.pem").display(),
            dir.join("gateway.pem").display(),
            dir.join("gateway.key").display(),
        );
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Mosquitto as started: its process, its plaintext and (optional) TLS addresses.
struct Broker {
    proc: Proc,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    version: String,
    config: String,
}

/// Removes ANSI escape sequences (tracing colours its fields).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Spawner<'a> {
    dir: &'a Path,
    pin: bool,
    pids_file: Option<&'a Path>,
    /// Mosquitto's max_queued_messages.
    max_queued: u64,
}

impl Spawner<'_> {
    /// Spawns `program args` (on CPU 1 when pinning and `pinned`); stdout to `dir/name.log`,
    /// stderr to the same file through a thread that also passes each line to the receiver
    /// (dropped once the process is ready; the thread keeps draining the pipe).
    fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        pinned: bool,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Proc, Receiver<String>)> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut command = if pinned && self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        if let Some(file) = self.pids_file {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(file)?;
            writeln!(f, "{}", child.id())?;
        }
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                let _ = tx.send(line);
            }
        });
        Ok((
            Proc {
                name: name.to_string(),
                child,
                _stdin: None,
            },
            rx,
        ))
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Feeds the child's stderr lines (bounded by [`READY_WAIT`]) to `ready` until it returns
    /// `Some`.
    fn wait_ready<T>(
        &self,
        name: &str,
        lines: &Receiver<String>,
        mut ready: impl FnMut(&str) -> Option<anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(r) = ready(&strip_ansi(&line)) {
                        return r;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{name} not ready after {READY_WAIT:?}: {}",
                        self.log_tail(name)
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("{name} exited: {}", self.log_tail(name))
                }
            }
        }
    }

    /// Mosquitto on a free loopback port (bind port 0, release it, have Mosquitto bind it;
    /// another try with new ports when it is taken meanwhile), ready once it logged its
    /// listen sockets and "running".
    fn mosquitto(&self, program: &Path, tls: bool) -> anyhow::Result<Broker> {
        let mut last_error = None;
        for attempt in 1..=5 {
            let port = free_port()?;
            let tls_port = if tls { Some(free_port()?) } else { None };
            let config = mosquitto_config(port, tls_port.map(|p| (p, self.dir)), self.max_queued);
            let path = self.dir.join("mosquitto.conf");
            std::fs::write(&path, &config)?;
            let name = format!("mosquitto-{attempt}");
            let path = path.display().to_string();
            let (proc, lines) = self.spawn(&name, program, &["-c", &path], false, &[])?;
            let mut opened = Vec::new();
            let mut version = String::new();
            let ready = self.wait_ready(&name, &lines, |line| {
                if let Some(v) = line.split_once("mosquitto version ") {
                    version = v.1.split_whitespace().next().unwrap_or("").to_string();
                }
                if let Some(rest) = line.split_once("Opening ipv4 listen socket on port ") {
                    opened.push(rest.1.trim_end_matches('.').trim().to_string());
                }
                if line.contains("Address already in use") {
                    return Some(Ok(false));
                }
                if line.contains("Error") {
                    return Some(Err(anyhow::anyhow!("mosquitto: {line}")));
                }
                let all = std::iter::once(port)
                    .chain(tls_port)
                    .all(|p| opened.contains(&p.to_string()));
                (line.ends_with(" running") && all).then_some(Ok(true))
            });
            drop(lines);
            match ready {
                Ok(true) => {
                    return Ok(Broker {
                        proc,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        tls_addr: tls_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
                        version,
                        config,
                    });
                }
                Ok(false) => last_error = Some(anyhow::anyhow!("port {port} taken")),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .context("mosquitto could not bind a free port in 5 attempts")
    }

    /// `ztgate run` on 127.0.0.1 port 0, its address from its "listening" log line.
    fn ztgate(
        &self,
        program: &Path,
        name: &str,
        broker: SocketAddr,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let config = write_ztgate_config(self.dir, name, "127.0.0.1:0".parse()?, broker)?;
        let config = config.display().to_string();
        let (p, lines) = self.spawn(
            name,
            program,
            &["run", "--config", &config],
            true,
            &[("RUST_LOG", "warn,ztgate=info"), ("NO_COLOR", "1")],
        )?;
        let addr = self.wait_ready(name, &lines, |line| {
            if !(line.contains("listening") && line.contains("listener=bench")) {
                return None;
            }
            let addr = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("addr="))
                .and_then(|a| a.parse().ok());
            Some(addr.with_context(|| format!("no address in {line:?}")))
        })?;
        Ok((p, addr))
    }
}

/// A loopback port nobody listens on right now (bound to port 0 and released).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default, Serialize)]
struct CellRuns {
    cell: String,
    saturated: Vec<Run>,
    paced: Vec<Run>,
}

#[derive(Default, Serialize)]
struct TargetReport {
    ok: bool,
    tls: Option<String>,
    errors: u64,
    first_errors: Vec<String>,
    /// The gateway's RSS once listening, before any load (KiB).
    rss_idle_kib: Option<u64>,
    cells: Vec<CellRuns>,
}

#[derive(Serialize)]
struct Medians {
    published_per_sec: Option<f64>,
    delivered_per_sec: Option<f64>,
    delivered_ratio: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    paced_p50_us: Option<f64>,
    paced_p99_us: Option<f64>,
    paced_ratio: Option<f64>,
    gateway_cores: Option<f64>,
    per_gateway_cpu_sec: Option<f64>,
    broker_cores: Option<f64>,
    client_cores: Option<f64>,
    machine_busy_cores: Option<f64>,
    other_cores: Option<f64>,
    gateway_rss_mib: Option<f64>,
}

impl CellRuns {
    fn medians(&self) -> Medians {
        let s = &self.saturated;
        let p = &self.paced;
        Medians {
            published_per_sec: median_of(s, |r| Some(r.published_per_sec)),
            delivered_per_sec: median_of(s, |r| Some(r.delivered_per_sec)),
            delivered_ratio: median_of(s, |r| Some(r.ratio)),
            p50_us: median_of(s, |r| Some(r.p50_us)),
            p99_us: median_of(s, |r| Some(r.p99_us)),
            paced_p50_us: median_of(p, |r| Some(r.p50_us)),
            paced_p99_us: median_of(p, |r| Some(r.p99_us)),
            paced_ratio: median_of(p, |r| Some(r.ratio)),
            gateway_cores: median_of(s, |r| r.gateway_cores),
            per_gateway_cpu_sec: median_of(s, |r| r.per_gateway_cpu_sec),
            broker_cores: median_of(s, |r| r.broker_cores),
            client_cores: median_of(s, |r| r.client_cores),
            machine_busy_cores: median_of(s, |r| r.machine_busy_cores),
            other_cores: median_of(s, |r| r.other_cores),
            gateway_rss_mib: median_of(s, |r| r.gateway_rss_kib.map(|k| k as f64 / 1024.0)),
        }
    }
}

fn table(settings: &Settings, cells: &[Cell], targets: &[(String, TargetReport)]) -> String {
    type Col = (&'static str, fn(&Medians) -> Option<f64>, usize);
    let cols: [Col; 13] = [
        ("pub/s", |m| m.published_per_sec, 0),
        ("deliv/s", |m| m.delivered_per_sec, 0),
        ("deliv/pub", |m| m.delivered_ratio, 4),
        ("p50 µs", |m| m.p50_us, 0),
        ("p99 µs", |m| m.p99_us, 0),
        ("low p50", |m| m.paced_p50_us, 0),
        ("low p99", |m| m.paced_p99_us, 0),
        ("gw cores", |m| m.gateway_cores, 2),
        ("msg/gw-CPU-s", |m| m.per_gateway_cpu_sec, 0),
        ("mosq cores", |m| m.broker_cores, 2),
        ("client cores", |m| m.client_cores, 2),
        ("other cores", |m| m.other_cores, 2),
        ("gw RSS MiB", |m| m.gateway_rss_mib, 1),
    ];
    let first = cells
        .iter()
        .map(|c| c.label().len())
        .chain(targets.iter().map(|(n, _)| n.len() + 2))
        .max()
        .unwrap_or(10)
        .max(20)
        + 1;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:first$}",
        format!("median of {} rounds", settings.rounds)
    );
    for (name, _, _) in &cols {
        let _ = write!(out, "{name:>13}");
    }
    out.push('\n');
    for (i, cell) in cells.iter().enumerate() {
        let _ = writeln!(out, "{}", cell.label());
        for (name, report) in targets {
            let Some(runs) = report.cells.get(i) else {
                continue;
            };
            let m = runs.medians();
            let _ = write!(out, "{:first$}", format!("  {name}"));
            for (_, f, decimals) in &cols {
                let cell = f(&m).map_or("-".to_string(), |v| format!("{v:.decimals$}"));
                let _ = write!(out, "{cell:>13}");
            }
            out.push('\n');
        }
    }
    let mut disturbed = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        for (name, report) in targets {
            let other = report.cells.get(i).and_then(|r| r.medians().other_cores);
            if let Some(other) = other.filter(|o| *o > 0.1) {
                disturbed.push(format!("{} {name} ({other:.2})", cell.label()));
            }
        }
    }
    if !disturbed.is_empty() {
        let _ = writeln!(
            out,
            "disturbed: other processes used > 0.1 cores during {}",
            disturbed.join(", ")
        );
    }
    let _ = write!(out, "{:first$}", "errors");
    for (name, r) in targets {
        let _ = write!(
            out,
            "  {name}: {}",
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
            let _ = writeln!(out, "negotiated, {name}: {tls}");
        }
        if let Some(kib) = r.rss_idle_kib {
            let _ = writeln!(out, "RSS idle, {name}: {:.1} MiB", kib as f64 / 1024.0);
        }
    }
    let _ = writeln!(
        out,
        "\npub/s: PUBLISHes written in the {:?} window (QoS 1: PUBACKed, ≤ {} in flight); deliv/s: \
         delivered to the subscriber within the window; deliv/pub: all delivered (drain \
         included) / published; p50/p99: publish → deliver over the saturated window; low \
         p50/p99: the same at one PUBLISH every {:?} for {:?}; cores: CPU-s per second of the \
         window (gw = ztgate, mosq = Mosquitto, client = publisher + subscriber, other = every \
         other process of the machine: load that competed); msg/gw-CPU-s: published per ztgate \
         CPU-second (CPU time in 1/CLK_TCK ticks: coarse below 0.05 cores).",
        settings.window, settings.inflight, settings.latency_interval, settings.latency_window
    );
    out
}

fn opt(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| format!("{c:.2}"))
}

fn progress(target: &str, round: usize, cell: &Cell, sat: &Run, paced: &Run) {
    eprintln!(
        "  round {round} {:<16} {target:<13} pub {:>8.0}/s deliv {:>8.0}/s ratio {:.4}  p50 {:>7.0} p99 {:>8.0} µs  low p50 {:>5.0} p99 {:>6.0} µs  cores: gw {:>4} mosq {:>4} client {:>4} other {:>4} (steal {:>4})  errors {}",
        cell.label(),
        sat.published_per_sec,
        sat.delivered_per_sec,
        sat.ratio,
        sat.p50_us,
        sat.p99_us,
        paced.p50_us,
        paced.p99_us,
        opt(sat.gateway_cores),
        opt(sat.broker_cores),
        opt(sat.client_cores),
        opt(sat.other_cores),
        opt(sat.steal_cores),
        sat.errors + paced.errors
    );
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
            eprintln!("MQTT load benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn mosquitto_missing() -> anyhow::Error {
    anyhow::anyhow!(
        "mosquitto not found (BENCH_MOSQUITTO, else PATH, /usr/sbin, /usr/local/sbin): \
         install Debian's mosquitto (scripts/test.sh and scripts/bench-mqtt.sh do); the MQTT \
         benchmark and its smoke test need a real broker"
    )
}

/// The real benchmark; `Ok(false)` when a target failed to serve.
fn benchmark() -> anyhow::Result<bool> {
    let settings = Settings::from_env()?;
    let mosquitto = settings.mosquitto.clone().ok_or_else(mosquitto_missing)?;
    if settings.pin {
        pin_self_to_cpu0()?;
    }
    let temp;
    let dir = match &settings.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("ztgate-bench-mqtt-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let tls = make_pki(&dir)?;
    let spawner = Spawner {
        dir: &dir,
        pin: settings.pin,
        pids_file: settings.pids_file.as_deref(),
        max_queued: settings.mosquitto_max_queued,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let want_tls = settings.targets.iter().any(|t| t == "mosquitto-tls");
    let mut broker = spawner.mosquitto(&mosquitto, want_tls)?;
    let cells = settings.cells();
    eprintln!(
        "mqtt: Mosquitto {} on {}{}; {} rounds of {} cells × {:?} saturated + {:?} at one PUBLISH per {:?}; {}",
        broker.version,
        broker.addr,
        broker
            .tls_addr
            .map_or(String::new(), |a| format!(" (TLS {a})")),
        settings.rounds,
        cells.len(),
        settings.window,
        settings.latency_window,
        settings.latency_interval,
        if settings.pin {
            "load generator + Mosquitto on CPU 0, ztgate on CPU 1"
        } else {
            "unpinned"
        }
    );

    let mut reports: Vec<(String, TargetReport)> = Vec::new();
    let mut gateways: Vec<Option<Proc>> = Vec::new();
    let mut endpoints: Vec<Option<Endpoint>> = Vec::new();
    let mut errors: Vec<Arc<Errors>> = Vec::new();
    for target in &settings.targets {
        let mut report = TargetReport {
            ok: true,
            cells: cells
                .iter()
                .map(|c| CellRuns {
                    cell: c.label(),
                    ..CellRuns::default()
                })
                .collect(),
            ..TargetReport::default()
        };
        let errs = Arc::new(Errors::default());
        let (gateway, endpoint) = match target.as_str() {
            "direct" => (
                None,
                Some(Endpoint {
                    addr: broker.addr,
                    tls: None,
                }),
            ),
            "mosquitto-tls" => (
                None,
                broker.tls_addr.map(|addr| Endpoint {
                    addr,
                    tls: Some(tls.clone()),
                }),
            ),
            _ => match spawner.ztgate(&settings.ztgate, "ztgate", broker.addr) {
                Ok((p, addr)) => {
                    report.rss_idle_kib = rss_kib(p.pid());
                    (
                        Some(p),
                        Some(Endpoint {
                            addr,
                            tls: Some(tls.clone()),
                        }),
                    )
                }
                Err(e) => {
                    report.ok = false;
                    errs.record("start", format!("{e:#}"));
                    (None, None)
                }
            },
        };
        if let Some(ep) = &endpoint {
            match rt.block_on(negotiated(ep)) {
                Ok(t) => report.tls = Some(t),
                Err(e) => {
                    errs.record("first connection", format!("{e:#}"));
                    report.ok = false;
                }
            }
        }
        reports.push((target.clone(), report));
        gateways.push(gateway);
        endpoints.push(endpoint);
        errors.push(errs);
    }

    for round in 1..=settings.rounds {
        for (c, cell) in cells.iter().enumerate() {
            for i in 0..reports.len() {
                let Some(ep) = endpoints[i].clone() else {
                    continue;
                };
                let name = reports[i].0.clone();
                let watch = Watch {
                    gateway: gateways[i].as_ref().map(Proc::pid),
                    broker: Some(broker.proc.pid()),
                    clk_tck: settings.clk_tck,
                };
                let errs = errors[i].clone();
                let (sat, paced) = rt.block_on(async {
                    let sat = measure(
                        &ep,
                        broker.addr,
                        *cell,
                        cell.topic(&name, round, "saturated"),
                        &Mode::Saturated(settings.window, u64::MAX),
                        settings.inflight,
                        watch,
                        &errs,
                    )
                    .await;
                    let paced = measure(
                        &ep,
                        broker.addr,
                        *cell,
                        cell.topic(&name, round, "paced"),
                        &Mode::Paced {
                            secs: settings.latency_window,
                            interval: settings.latency_interval,
                        },
                        settings.inflight,
                        watch,
                        &errs,
                    )
                    .await;
                    (sat, paced)
                });
                progress(&name, round, cell, &sat, &paced);
                let report = &mut reports[i].1;
                report.cells[c].saturated.push(sat);
                report.cells[c].paced.push(paced);
                if let Some(Err(e)) = gateways[i].as_mut().map(Proc::check_alive) {
                    errs.record("gateway", e);
                    report.ok = false;
                    endpoints[i] = None;
                }
            }
            broker.proc.check_alive()?;
        }
    }
    gateways.clear();
    broker.proc.check_alive()?;

    let mut all_ok = true;
    for ((_, report), errs) in reports.iter_mut().zip(&errors) {
        report.errors = errs.count();
        report.first_errors = errs.first();
        report.ok &= report.errors == 0;
        all_ok &= report.ok;
    }

    let text = table(&settings, &cells, &reports);
    println!("{text}");
    for (name, r) in &reports {
        for e in &r.first_errors {
            println!("{name}: {e}");
        }
    }
    let json = serde_json::json!({
        "settings": {
            "rounds": settings.rounds,
            "window_secs": settings.window.as_secs_f64(),
            "latency_secs": settings.latency_window.as_secs_f64(),
            "latency_interval_us": settings.latency_interval.as_micros() as u64,
            "qos1_inflight": settings.inflight,
            "qos0_batch_bytes": BATCH_BYTES,
            "cells": cells.iter().map(Cell::label).collect::<Vec<_>>(),
            "cpu_split": if settings.pin {
                "load generator (publisher + subscriber, tokio, 1 worker) and Mosquitto on CPU 0; ztgate alone on CPU 1 (its runtime starts 1 worker)"
            } else {
                "unpinned: load generator 1 tokio worker; ztgate one worker per CPU"
            },
            "mosquitto": broker.version,
            "mosquitto_conf": broker.config,
        },
        "ok": all_ok,
        "medians": reports.iter().map(|(n, r)| {
            (n.clone(), r.cells.iter().map(|c| (c.cell.clone(), c.medians())).collect::<std::collections::BTreeMap<_, _>>())
        }).collect::<std::collections::BTreeMap<_, _>>(),
        "targets": reports.iter().map(|(n, r)| (n.clone(), r)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    drop(broker);
    if let Some(parent) = settings.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&settings.out, serde_json::to_string_pretty(&json)?)?;
    println!("JSON: {}", settings.out.display());
    if !all_ok {
        eprintln!("mqtt: a target failed (see the errors above)");
    }
    Ok(all_ok)
}

/// What `cargo test --all-targets` runs: a spawned Mosquitto, an in-process gateway, each cell
/// for a moment through both, every delivery checked.
fn smoke() -> anyhow::Result<bool> {
    let started = Instant::now();
    let mosquitto = find_mosquitto().ok_or_else(mosquitto_missing)?;
    let dir = tempfile::Builder::new()
        .prefix("ztgate-bench-mqtt-smoke-")
        .tempdir()?;
    let tls = make_pki(dir.path())?;
    let spawner = Spawner {
        dir: dir.path(),
        pin: false,
        pids_file: None,
        max_queued: MOSQUITTO_MAX_QUEUED,
    };
    let broker = spawner.mosquitto(&mosquitto, false)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let config =
            write_ztgate_config(dir.path(), "ztgate", "127.0.0.1:0".parse()?, broker.addr)?;
        let config = ztgate::config::Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let gateway = ztgate::gateway::Gateway::start(config).await?;
        let gateway_addr = gateway.address("bench").context("no listener")?;
        let watch = Watch {
            gateway: None,
            broker: Some(broker.proc.pid()),
            clk_tck: 100.0,
        };
        let endpoints = [
            (
                "direct",
                Endpoint {
                    addr: broker.addr,
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
        let cells = [
            (Version::V5, QoS::AtMostOnce),
            (Version::V5, QoS::AtLeastOnce),
            (Version::V311, QoS::AtLeastOnce),
        ];
        for (name, ep) in &endpoints {
            for (version, qos) in cells {
                let cell = Cell {
                    version,
                    qos,
                    payload: 64,
                };
                let errors = Errors::default();
                let sat = measure(
                    ep,
                    broker.addr,
                    cell,
                    cell.topic(name, 0, "saturated"),
                    &Mode::Saturated(Duration::from_millis(100), 5_000),
                    20,
                    watch,
                    &errors,
                )
                .await;
                let paced = measure(
                    ep,
                    broker.addr,
                    cell,
                    cell.topic(name, 0, "paced"),
                    &Mode::Paced {
                        secs: Duration::from_millis(30),
                        interval: Duration::from_millis(1),
                    },
                    20,
                    watch,
                    &errors,
                )
                .await;
                eprintln!(
                    "  smoke {name:<7} {:<16} saturated {}/{} delivered, low rate {}/{}, {:.2} s",
                    cell.label(),
                    sat.delivered,
                    sat.published,
                    paced.delivered,
                    paced.published,
                    started.elapsed().as_secs_f64()
                );
                let complete = |r: &Run| {
                    r.published > 0
                        && (r.delivered == r.published
                            || (qos == QoS::AtMostOnce && r.delivered > 0))
                };
                if errors.count() > 0 || !complete(&sat) || paced.delivered != paced.published {
                    bail!(
                        "smoke run {name} {} failed: {:?}\nsaturated: {sat:?}\npaced: {paced:?}",
                        cell.label(),
                        errors.first()
                    );
                }
            }
        }
        gateway.shutdown().await;
        Ok(())
    });
    drop(broker);
    result?;
    println!("mqtt: smoke run ok (the benchmark: scripts/bench-mqtt.sh)");
    Ok(true)
}
