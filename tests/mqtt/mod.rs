//! MQTT test harness: a real Mosquitto broker as a child process (plain listener, optionally a
//! TLS listener requiring client certificates), a direct subscriber on the broker, the gateway
//! in-process with an MQTT service, rumqttc clients (3.1.1 and 5.0) through the gateway's mTLS,
//! and a raw TLS client with a tiny MQTT encoder/decoder for what no library sends.
#![allow(dead_code)]

pub mod wire;
// The PKI of the Modbus tests: one CA, the gateway's certificate (DNS "broker", "127.0.0.1"),
// client certificates per identity.
#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)] // BOTH: for the test crates that build their own TLS configs
pub use common::{BOTH, Pki};

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use ztgate::config::{Config, SourceFile};
use ztgate::gateway::Gateway;
use ztgate::pki::{Ca, CertSpec};

#[allow(unused_imports)]
pub use wire::{Packet, Raw, Will};

/// Longest any single wait in these tests lasts.
pub const WAIT: Duration = Duration::from_secs(10);

/// The sensor identity (certificate CN) the default policy knows.
pub const SENSOR: &str = "s-7";
/// A second sensor (same rule, its own topics).
pub const SENSOR2: &str = "s-8";
/// An identity whose role has no rule for the `broker` service.
pub const OPERATOR: &str = "op-1";

/// MQTT protocol version under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V {
    V311,
    V5,
}

impl V {
    pub fn is5(self) -> bool {
        self == V::V5
    }
}

// ---------------------------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------------------------

/// Mosquitto's stderr, collected line by line; `seq` ticks on every line and at EOF.
struct Log {
    text: Mutex<String>,
    eof: Mutex<bool>,
    seq: watch::Sender<u64>,
}

/// TLS material for the broker's second listener.
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A Mosquitto 2.0.x broker on 127.0.0.1; killed (and reaped) on drop.
pub struct Mosquitto {
    /// The plain (no TLS) listener.
    pub addr: SocketAddr,
    /// The TLS listener, when asked for.
    pub tls_addr: Option<SocketAddr>,
    child: Child,
    log: Arc<Log>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        Mosquitto::start_with(None).await
    }

    /// Starts the broker; with `tls`, a second listener requiring a client certificate.
    pub async fn start_with(tls: Option<&BrokerTls>) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let tls_port = tls.map(|_| free_port());
            let mut conf = format!(
                "persistence false\nallow_anonymous true\nlog_dest stderr\nlog_type all\n\
                 user root\nlistener {port} 127.0.0.1\n"
            );
            if let (Some(t), Some(p)) = (tls, tls_port) {
                conf.push_str(&format!(
                    "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                     require_certificate true\nuse_identity_as_username false\n",
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ));
            }
            let conf_path = dir.path().join("mosquitto.conf");
            std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
            let mut child = Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto runs (apt-get install mosquitto)");
            let stderr = child.stderr.take().expect("stderr");
            let (seq, _) = watch::channel(0u64);
            let log = Arc::new(Log {
                text: Mutex::new(String::new()),
                eof: Mutex::new(false),
                seq,
            });
            let writer = log.clone();
            std::thread::spawn(move || {
                let reader = std::io::BufReader::new(stderr);
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut t = writer.text.lock().unwrap();
                        t.push_str(&line);
                        t.push('\n');
                    }
                    writer.seq.send_modify(|n| *n += 1);
                }
                *writer.eof.lock().unwrap() = true;
                writer.seq.send_modify(|n| *n += 1);
            });
            let mut broker = Mosquitto {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                tls_addr: tls_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
                child,
                log,
                _dir: tempfile::tempdir().expect("tempdir"),
            };
            let mut wanted = vec![format!("Opening ipv4 listen socket on port {port}.")];
            if let Some(p) = tls_port {
                wanted.push(format!("Opening ipv4 listen socket on port {p}."));
            }
            let outcome = broker
                .wait_log_state(|text, eof| {
                    if text.contains("Address already in use") {
                        Some(Err(true))
                    } else if wanted.iter().all(|w| text.contains(w.as_str()))
                        // Logged after every listener is bound and listening (the "Opening"
                        // line comes before bind()).
                        && text.contains(" running")
                    {
                        Some(Ok(()))
                    } else if eof {
                        Some(Err(false))
                    } else {
                        None
                    }
                })
                .await;
            match outcome {
                Some(Ok(())) => {
                    // Readiness: the log says it listens; a TCP connect confirms.
                    let ok =
                        tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(broker.addr))
                            .await
                            .is_ok_and(|r| r.is_ok());
                    assert!(
                        ok,
                        "mosquitto logged its listener but refuses connections:\n{}",
                        broker.log()
                    );
                    broker._dir = dir;
                    return broker;
                }
                Some(Err(true)) => {
                    last_log = broker.log();
                    continue; // port taken between our probe and mosquitto's bind: retry
                }
                Some(Err(false)) | None => {
                    panic!("mosquitto did not start:\n{}", broker.log());
                }
            }
        }
        panic!("mosquitto: address in use 5 times; last log:\n{last_log}");
    }

    /// Everything mosquitto logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    async fn wait_log_state<T>(&self, f: impl Fn(&str, bool) -> Option<T>) -> Option<T> {
        let mut rx = self.log.seq.subscribe();
        tokio::time::timeout(WAIT, async {
            loop {
                let eof = *self.log.eof.lock().unwrap();
                if let Some(v) = f(&self.log(), eof) {
                    return Some(v);
                }
                if eof || rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let found = self
            .wait_log_state(|t, _| t.contains(needle).then_some(()))
            .await;
        assert!(
            found.is_some(),
            "mosquitto never logged {needle:?}; log:\n{}",
            self.log()
        );
    }

    /// Waits until mosquitto logged a client connected with this client id.
    pub async fn wait_client(&self, client_id: &str) {
        self.wait_log(&format!(" as {client_id} (")).await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Events collected from a background task (rumqttc event loops)
// ---------------------------------------------------------------------------------------------

struct EventState<E> {
    events: Vec<E>,
    ended: Option<String>,
}

/// Events an event loop produced, in order, and why it ended (if it did).
pub struct Events<E> {
    state: Arc<Mutex<EventState<E>>>,
    seq: Arc<watch::Sender<u64>>,
}

impl<E> Clone for Events<E> {
    fn clone(&self) -> Self {
        Events {
            state: self.state.clone(),
            seq: self.seq.clone(),
        }
    }
}

impl<E: Clone + std::fmt::Debug> Events<E> {
    fn new() -> Events<E> {
        Events {
            state: Arc::new(Mutex::new(EventState {
                events: Vec::new(),
                ended: None,
            })),
            seq: Arc::new(watch::channel(0).0),
        }
    }

    fn push(&self, e: E) {
        self.state.lock().unwrap().events.push(e);
        self.seq.send_modify(|n| *n += 1);
    }

    fn end(&self, why: String) {
        self.state.lock().unwrap().ended = Some(why);
        self.seq.send_modify(|n| *n += 1);
    }

    pub fn all(&self) -> Vec<E> {
        self.state.lock().unwrap().events.clone()
    }

    pub fn ended(&self) -> Option<String> {
        self.state.lock().unwrap().ended.clone()
    }

    /// Waits (bounded) until `f` over (events, end reason) says `Some`.
    pub async fn wait<T>(&self, what: &str, f: impl Fn(&[E], Option<&str>) -> Option<T>) -> T {
        let mut rx = self.seq.subscribe();
        let r = tokio::time::timeout(WAIT, async {
            loop {
                {
                    let s = self.state.lock().unwrap();
                    if let Some(v) = f(&s.events, s.ended.as_deref()) {
                        return Some(v);
                    }
                    if s.ended.is_some() {
                        return None;
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        match r {
            Some(v) => v,
            None => {
                let s = self.state.lock().unwrap();
                panic!(
                    "waiting for {what}: not seen within {WAIT:?}; ended: {:?}; events: {:#?}",
                    s.ended, s.events
                )
            }
        }
    }

    /// Waits until the event loop ended; returns why.
    pub async fn wait_end(&self) -> String {
        self.wait("the connection to end", |_, end| end.map(str::to_string))
            .await
    }
}

/// Pumps a rumqttc 3.1.1 event loop until its first error (no reconnects), recording events.
fn pump_v311(mut el: rumqttc::EventLoop) -> (Events<rumqttc::Event>, tokio::task::JoinHandle<()>) {
    let events = Events::new();
    let ev = events.clone();
    let task = tokio::spawn(async move {
        let run = async {
            loop {
                match el.poll().await {
                    Ok(e) => ev.push(e),
                    Err(e) => {
                        ev.end(format!("{e:?}"));
                        return;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .is_err()
        {
            ev.end("pump deadline".into());
        }
    });
    (events, task)
}

fn pump_v5(
    mut el: rumqttc::v5::EventLoop,
) -> (Events<rumqttc::v5::Event>, tokio::task::JoinHandle<()>) {
    let events = Events::new();
    let ev = events.clone();
    let task = tokio::spawn(async move {
        let run = async {
            loop {
                match el.poll().await {
                    Ok(e) => ev.push(e),
                    Err(e) => {
                        ev.end(format!("{e:?}"));
                        return;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .is_err()
        {
            ev.end("pump deadline".into());
        }
    });
    (events, task)
}

/// A rumqttc 3.1.1 client with its event loop pumped in the background (aborted on drop).
pub struct Client311 {
    pub client: rumqttc::AsyncClient,
    pub events: Events<rumqttc::Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client311 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client311 {
    pub fn start(opts: rumqttc::MqttOptions) -> Client311 {
        let (client, el) = rumqttc::AsyncClient::new(opts, 64);
        let (events, task) = pump_v311(el);
        Client311 {
            client,
            events,
            task,
        }
    }

    /// Waits for a successful CONNACK.
    pub async fn connected(&self) -> rumqttc::ConnAck {
        self.events
            .wait("CONNACK", |evs, _| {
                evs.iter().find_map(|e| match e {
                    rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c)) => Some(c.clone()),
                    _ => None,
                })
            })
            .await
    }

    /// Waits for the SUBACK of packet id `pkid`... rumqttc numbers from 1; the n-th SUBACK.
    pub async fn suback(&self, n: usize) -> rumqttc::SubAck {
        self.events
            .wait("SUBACK", |evs, _| {
                evs.iter()
                    .filter_map(|e| match e {
                        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .nth(n)
            })
            .await
    }

    /// Waits for a PUBLISH on `topic`.
    pub async fn received(&self, topic: &str) -> rumqttc::Publish {
        self.events
            .wait(&format!("PUBLISH on {topic}"), |evs, _| {
                evs.iter().find_map(|e| match e {
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) if p.topic == topic => {
                        Some(p.clone())
                    }
                    _ => None,
                })
            })
            .await
    }

    pub fn published_topics(&self) -> Vec<String> {
        self.events
            .all()
            .iter()
            .filter_map(|e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.topic.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A rumqttc 5.0 client with its event loop pumped in the background (aborted on drop).
pub struct Client5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: Events<rumqttc::v5::Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client5 {
    pub fn start(opts: rumqttc::v5::MqttOptions) -> Client5 {
        let (client, el) = rumqttc::v5::AsyncClient::new(opts, 64);
        let (events, task) = pump_v5(el);
        Client5 {
            client,
            events,
            task,
        }
    }

    pub async fn connected(&self) -> rumqttc::v5::mqttbytes::v5::ConnAck {
        use rumqttc::v5::{Event, mqttbytes::v5::Packet};
        self.events
            .wait("CONNACK", |evs, _| {
                evs.iter().find_map(|e| match e {
                    Event::Incoming(Packet::ConnAck(c)) => Some(c.clone()),
                    _ => None,
                })
            })
            .await
    }

    pub async fn suback(&self, n: usize) -> rumqttc::v5::mqttbytes::v5::SubAck {
        use rumqttc::v5::{Event, mqttbytes::v5::Packet};
        self.events
            .wait("SUBACK", |evs, _| {
                evs.iter()
                    .filter_map(|e| match e {
                        Event::Incoming(Packet::SubAck(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .nth(n)
            })
            .await
    }

    pub async fn received(&self, topic: &str) -> rumqttc::v5::mqttbytes::v5::Publish {
        use rumqttc::v5::{Event, mqttbytes::v5::Packet};
        self.events
            .wait(&format!("PUBLISH on {topic}"), |evs, _| {
                evs.iter().find_map(|e| match e {
                    Event::Incoming(Packet::Publish(p)) if p.topic == topic.as_bytes() => {
                        Some(p.clone())
                    }
                    _ => None,
                })
            })
            .await
    }

    pub fn published_topics(&self) -> Vec<String> {
        use rumqttc::v5::{Event, mqttbytes::v5::Packet};
        self.events
            .all()
            .iter()
            .filter_map(|e| match e {
                Event::Incoming(Packet::Publish(p)) => {
                    Some(String::from_utf8_lossy(&p.topic).into_owned())
                }
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Direct client on the broker's plain listener
// ---------------------------------------------------------------------------------------------

/// One message the direct subscriber received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// A 3.1.1 client connected straight to the broker (no gateway), subscribed to `#` at QoS 2,
/// so it sees every message with the QoS it was published at. It also publishes "from the
/// broker side".
pub struct Direct {
    pub c: Client311,
}

impl Direct {
    pub async fn start(broker: &Mosquitto, client_id: &str) -> Direct {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", broker.addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        let c = Client311::start(o);
        c.connected().await;
        c.client
            .subscribe("#", rumqttc::QoS::ExactlyOnce)
            .await
            .expect("queue SUBSCRIBE");
        let ack = c.suback(0).await;
        assert_eq!(
            ack.return_codes,
            vec![rumqttc::SubscribeReasonCode::Success(
                rumqttc::QoS::ExactlyOnce
            )]
        );
        Direct { c }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.c
            .events
            .all()
            .iter()
            .filter_map(|e| match e {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(Received {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                }),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) for a message on `topic`.
    pub async fn wait_for(&self, topic: &str) -> Received {
        let p = self.c.received(topic).await;
        Received {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
        }
    }

    /// Publishes straight to the broker.
    pub async fn publish(&self, topic: &str, qos: u8, payload: &[u8]) {
        self.c
            .client
            .publish(topic, qos_of(qos), false, payload.to_vec())
            .await
            .expect("queue PUBLISH");
    }

    pub fn topics(&self) -> Vec<String> {
        self.messages().into_iter().map(|m| m.topic).collect()
    }
}

pub fn qos_of(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

pub fn qos5_of(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

// ---------------------------------------------------------------------------------------------
// PKI and the gateway
// ---------------------------------------------------------------------------------------------

/// A separate PKI for the broker's TLS listener: its own CA, a server certificate for
/// 127.0.0.1, and a client certificate for the gateway. Files live in `dir`.
pub struct UpstreamPki {
    pub broker: BrokerTls,
    pub gw_cert: PathBuf,
    pub gw_key: PathBuf,
}

impl UpstreamPki {
    pub fn new(dir: &Path) -> UpstreamPki {
        let ca = Ca::generate("broker CA", 1).expect("broker CA");
        let server = ca
            .issue_server(&CertSpec::new("mosquitto", 1).with_dns("127.0.0.1"))
            .expect("broker cert");
        let client = ca
            .issue_client(&CertSpec::new("ztgate-upstream", 1))
            .expect("gateway client cert");
        let ca_path = dir.join("broker-ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).expect("write broker CA");
        let (cert, key) = ztgate::pki::write_files(dir, "broker", &server).expect("write");
        let (gw_cert, gw_key) = ztgate::pki::write_files(dir, "gw-client", &client).expect("write");
        UpstreamPki {
            broker: BrokerTls {
                ca: ca_path,
                cert,
                key,
            },
            gw_cert,
            gw_key,
        }
    }
}

/// The default policy: sensors publish their telemetry and read their commands and the
/// broadcast topics; the operator role has no rule for `broker`.
pub fn default_policy() -> String {
    policy_with(
        r#"publish = ["plant1/line1/{identity}/telemetry/#"]
subscribe = ["plant1/line1/{identity}/cmd/#", "plant1/broadcast/+"]"#,
    )
}

/// The default policy with other `[rule.mqtt]` topic lines (max_qos 1, retain false and
/// max_payload 1024 kept).
pub fn policy_with(topics: &str) -> String {
    format!(
        r#"[roles]
sensor = "field devices"
operator = "HMI"
[[identity]]
match = "{SENSOR}"
roles = ["sensor"]
[[identity]]
match = "{SENSOR2}"
roles = ["sensor"]
[[identity]]
match = "{OPERATOR}"
roles = ["operator"]
[[rule]]
id = "sensor-telemetry"
roles = ["sensor"]
services = ["broker"]
[rule.mqtt]
{topics}
max_qos = 1
retain = false
max_payload = 1024
"#
    )
}

/// Options for the gateway under test.
pub struct GwOptions {
    /// Extra lines for the `[[service]]` table.
    pub service: String,
    /// `[service.upstream_tls]` body, if any.
    pub upstream_tls: Option<String>,
    /// The policy file's text.
    pub policy: String,
    /// Lines for `[limits]`.
    pub limits: String,
}

impl Default for GwOptions {
    fn default() -> GwOptions {
        GwOptions {
            service: "max_packet_size = 65536".into(),
            upstream_tls: None,
            policy: default_policy(),
            limits: String::new(),
        }
    }
}

pub fn config_text(dir: &Path, upstream: SocketAddr, opts: &GwOptions) -> String {
    let upstream_tls = match &opts.upstream_tls {
        Some(t) => format!("[service.upstream_tls]\n{t}\n"),
        None => String::new(),
    };
    format!(
        r#"
[gateway]
name = "test-gw"
[tls]
client_ca = "{dir}/ca.pem"
cert = "{dir}/gateway.pem"
key = "{dir}/gateway.key"
[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"
default_service = "broker"
[[service]]
name = "broker"
protocol = "mqtt"
upstream = "{upstream}"
{service}
{upstream_tls}
[limits]
{limits}
[audit]
file = "{dir}/audit.jsonl"
"#,
        dir = dir.display(),
        service = opts.service,
        limits = opts.limits,
    )
}

pub fn compile(dir: &Path, upstream: SocketAddr, opts: &GwOptions) -> Config {
    let main = SourceFile::new("ztgate.toml", config_text(dir, upstream, opts));
    let policies = [SourceFile::new("policies/mqtt.toml", opts.policy.clone())];
    Config::from_sources(&main, &policies, dir)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
}

/// The gateway in-process with one MQTT service in front of `upstream`.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    pub audit_path: PathBuf,
}

impl Env {
    pub async fn start(upstream: SocketAddr, opts: GwOptions) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        Env::start_in(dir, upstream, opts).await
    }

    /// As `start`, in a directory the caller prepared (e.g. with upstream TLS files).
    pub async fn start_in(dir: tempfile::TempDir, upstream: SocketAddr, opts: GwOptions) -> Env {
        let pki = Pki::new(dir.path());
        let config = compile(dir.path(), upstream, &opts);
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let addr = gateway.address("mqtt").expect("mqtt listener");
        let audit_path = dir.path().join("audit.jsonl");
        Env {
            dir,
            pki,
            gateway: Some(gateway),
            addr,
            upstream,
            audit_path,
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    /// Replaces the policy (same services) with `policy`.
    pub fn reload_policy(&self, policy: &str) {
        let opts = GwOptions {
            policy: policy.to_string(),
            ..GwOptions::default()
        };
        let config = compile(self.dir.path(), self.upstream, &opts);
        self.gateway()
            .reload_policy(ztgate::policy::Policy::compile(config.policy));
    }

    /// rumqttc 3.1.1 options for a client with `identity`'s certificate and `client_id`.
    pub fn opts311(&self, identity: &str, client_id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(self.pki.identity_config(identity)),
        ));
        o
    }

    pub fn opts5(&self, identity: &str, client_id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", self.addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(self.pki.identity_config(identity)),
        ));
        o
    }

    /// A raw TLS connection with `identity`'s certificate (no MQTT bytes sent yet).
    pub async fn raw(&self, identity: &str, v: V) -> Raw {
        Raw::connect(self.addr, self.pki.identity_config(identity), v).await
    }

    /// A raw connection that sent CONNECT (client id = identity) and got CONNACK success.
    pub async fn raw_session(&self, identity: &str, v: V) -> Raw {
        let mut r = self.raw(identity, v).await;
        r.send(&wire::connect(v, identity, None)).await;
        let ack = r.expect(wire::CONNACK).await;
        assert_eq!(ack.connack_code(), 0, "CONNACK for {identity}: {ack:?}");
        r
    }

    /// Every audit event written so far (flushes the queue first).
    pub async fn audit(&self) -> Vec<serde_json::Value> {
        self.gateway().audit().flush().await;
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    pub async fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        self.audit()
            .await
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Waits (bounded: 500 polls of the flushed file, 10 ms apart) for an event of `kind`.
    pub async fn wait_event(
        &self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..500 {
            if let Some(e) = self.events(kind).await.into_iter().find(|e| pred(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no {kind} audit event matched within 5 s; audit: {:#?}",
            self.audit().await
        );
    }

    /// Waits for an `mqtt_denied` event for `packet` with `reason.kind == kind`.
    pub async fn wait_denied(&self, packet: &str, kind: &str) -> serde_json::Value {
        self.wait_event("mqtt_denied", |e| {
            e["packet"] == packet && e["reason"]["kind"] == kind
        })
        .await
    }
}
