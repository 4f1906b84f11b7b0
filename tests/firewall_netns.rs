//! Segmentation proven with real traffic: three hosts in network namespaces the test makes
//! (IT client — gateway with two legs and forwarding on — OT with a real Modbus server), the
//! real `nft`, and `ztgate run` as a process in the gateway's namespace. Needs root (CI runs as
//! root); everything stays inside 10.77.0.0/16 in namespaces removed at the end.

mod netns;

use netns::{Netns, Topology};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use ztgate::demo::DemoPki;
use ztgate::demo::client::ModbusClient;

const BIN: &str = env!("CARGO_BIN_EXE_ztgate");
/// How long a connection attempt waits before the test calls the path dropped. A dropped SYN
/// gets no answer at all; a working path answers within milliseconds inside namespaces.
const DROPPED: Duration = Duration::from_millis(1500);

/// A child process killed (and reaped) on drop, also when the test fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The simulated PLC (tokio-modbus server) inside the OT namespace.
fn start_plc(ot: &Netns, bind: SocketAddr) -> Proc {
    let mut child = ot
        .command(BIN)
        .args(["sim-plc", "--bind", &bind.to_string()])
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sim-plc starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("readiness line");
    assert!(line.starts_with("READY "), "sim-plc said {line:?}");
    Proc(child)
}

/// Waits (bounded) for the `n`-th audit event of `kind` and returns it.
fn wait_audit_nth(path: &Path, kind: &str, n: usize) -> serde_json::Value {
    for _ in 0..1000 {
        if let Ok(text) = std::fs::read_to_string(path) {
            // A line still being written does not parse yet: it is read again next round.
            let found: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["event"] == kind)
                .collect();
            if let Some(v) = found.into_iter().nth(n - 1) {
                return v;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "no {kind} audit event #{n} within 10 s in {}",
        path.display()
    );
}

fn wait_audit(path: &Path, kind: &str) -> serde_json::Value {
    wait_audit_nth(path, kind, 1)
}

struct Gateway {
    dir: tempfile::TempDir,
    pki: DemoPki,
    config: std::path::PathBuf,
    audit: std::path::PathBuf,
    proc: Option<Proc>,
}

impl Gateway {
    /// Writes the config for the topology and starts `ztgate run` in the gateway namespace;
    /// returns once the firewall is applied and the listener is bound.
    fn start(t: &Topology, quarantine_after: u32) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::create(dir.path()).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        // The Modbus policies only: the MQTT ones name a service this topology has not.
        for name in ["roles.toml", "line1.toml"] {
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .join(name);
            std::fs::copy(&shipped, policies.join(name)).unwrap();
        }
        let config = dir.path().join("ztgate.toml");
        let audit = dir.path().join("audit.jsonl");
        std::fs::write(
            &config,
            format!(
                r#"
[gateway]
name = "netns-gw"
[tls]
client_ca = "ca.pem"
cert = "gateway.pem"
key = "gateway.key"
handshake_timeout = "2s"
[[listener]]
name = "modbus"
bind = "{gw_it}:802"
default_service = "plc-line1"
zones = ["it"]
[[service]]
name = "plc-line1"
protocol = "modbus"
upstream = "{ot}:502"
[audit]
file = "audit.jsonl"
[[zone]]
name = "it"
interfaces = ["it0"]
networks = ["{it_net}", "{it_net6}"]
[[zone]]
name = "ot"
interfaces = ["ot0"]
networks = ["{ot_net}", "{ot_net6}"]
protected = true
[firewall]
quarantine_after = {quarantine_after}
quarantine_window = "60s"
quarantine_time = "10m"
"#,
                gw_it = t.gw_it_addr,
                ot = t.ot_addr,
                it_net = ipnet::Ipv4Net::new(t.it_addr, 24).unwrap().trunc(),
                ot_net = ipnet::Ipv4Net::new(t.ot_addr, 24).unwrap().trunc(),
                it_net6 = ipnet::Ipv6Net::new(t.it_addr6, 64).unwrap().trunc(),
                ot_net6 = ipnet::Ipv6Net::new(t.ot_addr6, 64).unwrap().trunc(),
            ),
        )
        .unwrap();
        let mut gw = Gateway {
            dir,
            pki,
            config,
            audit,
            proc: None,
        };
        gw.run(t);
        gw
    }

    fn run(&mut self, t: &Topology) {
        let log = std::fs::File::create(self.dir.path().join("ztgate.log")).unwrap();
        let child =
            t.gw.command(BIN)
                .args(["run", "--config", self.config.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stderr(log)
                .spawn()
                .expect("ztgate runs");
        self.proc = Some(Proc(child));
        if std::panic::catch_unwind(|| wait_audit(&self.audit, "firewall_applied")).is_err() {
            let log =
                std::fs::read_to_string(self.dir.path().join("ztgate.log")).unwrap_or_default();
            panic!("ztgate did not come up in the gateway namespace; its log:\n{log}");
        }
    }

    fn pid(&self) -> String {
        self.proc.as_ref().expect("running").0.id().to_string()
    }

    fn ztgate(&self, ns: &Netns, args: &[&str]) -> String {
        let out = ns.command(BIN).args(args).output().expect("ztgate runs");
        assert!(
            out.status.success(),
            "ztgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A TLS Modbus client connected from the IT namespace.
async fn client_from_it(
    t: &Topology,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<ModbusClient<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let addr = SocketAddr::from((t.gw_it_addr, 802));
    let std = t.it.connect(addr, DROPPED)?;
    std.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(std)?;
    // The demo's gateway certificate names "plc-line1", which is also the service's SNI.
    let name = rustls::pki_types::ServerName::try_from("plc-line1").expect("valid name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(ModbusClient::new(tls))
}

fn direct(t: &Topology) -> std::io::Result<std::net::TcpStream> {
    t.it.connect(SocketAddr::from((t.ot_addr, 502)), DROPPED)
}

fn direct6(t: &Topology) -> std::io::Result<std::net::TcpStream> {
    t.it.connect(SocketAddr::from((t.ot_addr6, 502)), DROPPED)
}

fn assert_dropped(r: std::io::Result<std::net::TcpStream>, what: &str) {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        Err(e) => panic!("{what}: expected a silent drop (timeout), got {e}"),
        Ok(_) => panic!("{what}: the connection went through"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_it_to_ot_is_dropped_while_the_gateway_path_works_even_after_kill_9() {
    let t = Topology::new();
    let _plc = start_plc(&t.ot, SocketAddr::from((t.ot_addr, 502)));
    let _plc6 = start_plc(&t.ot, SocketAddr::from((t.ot_addr6, 502)));
    // Before ztgate: IT reaches the PLC directly, over IPv4 and IPv6 (so this test can fail).
    direct(&t).expect("before ztgate, IT reaches the PLC directly");
    direct6(&t).expect("before ztgate, IT reaches the PLC directly over IPv6");
    // Another table on the gateway host: ztgate must never touch it.
    t.gw.run("nft", &["add", "table", "inet", "admin_rules"]);
    t.gw.run("nft", &["add", "chain", "inet", "admin_rules", "keep"]);

    let mut gw = Gateway::start(&t, 0);
    assert_dropped(direct(&t), "direct IT → OT with ztgate running");
    assert_dropped(direct6(&t), "direct IT → OT over IPv6 with ztgate running");
    let mut hmi = client_from_it(&t, gw.pki.client(&gw.pki.hmi).unwrap())
        .await
        .expect("mTLS through the gateway");
    assert_eq!(
        hmi.request(1, &[3, 0, 7, 0, 1]).await.unwrap(),
        vec![3, 2, 0, 7]
    );
    let tables = t.gw.run("nft", &["list", "tables"]);
    assert!(
        tables.contains("admin_rules") && tables.contains("ztgate"),
        "{tables}"
    );

    // A reload re-applies the ruleset; the other table survives that too.
    Command::new("kill")
        .args(["-HUP", &gw.pid()])
        .status()
        .unwrap();
    wait_audit_nth(&gw.audit, "firewall_applied", 2);
    assert!(t.gw.run("nft", &["list", "tables"]).contains("admin_rules"));
    assert_dropped(direct(&t), "direct IT → OT after reload");

    // A reload that moves the listener is not applied to the firewall until a restart: the
    // running listener on 802 must stay reachable.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, text.replace(":802\"", ":8802\"")).unwrap();
    Command::new("kill")
        .args(["-HUP", &gw.pid()])
        .status()
        .unwrap();
    let refused = wait_audit(&gw.audit, "firewall_not_reapplied");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("listeners or services changed")
    );
    let mut again = client_from_it(&t, gw.pki.client(&gw.pki.hmi).unwrap())
        .await
        .expect("802 still open");
    assert_eq!(
        again.request(1, &[3, 0, 8, 0, 1]).await.unwrap(),
        vec![3, 2, 0, 8]
    );

    // kill -9: no chance to clean up, and the path stays closed (fail closed).
    Command::new("kill")
        .args(["-9", &gw.pid()])
        .status()
        .unwrap();
    if let Some(mut p) = gw.proc.take() {
        let _ = p.0.wait();
    }
    assert_dropped(direct(&t), "direct IT → OT after kill -9 of ztgate");
    assert_dropped(
        direct6(&t),
        "direct IT → OT over IPv6 after kill -9 of ztgate",
    );
    let status = gw.ztgate(&t.gw, &["firewall", "status"]);
    assert!(status.contains("forward drop"), "{status}");

    // `firewall remove` is the deliberate way back.
    gw.ztgate(&t.gw, &["firewall", "remove"]);
    direct(&t).expect("after firewall remove, the direct path is back");
    direct6(&t).expect("after firewall remove, the direct IPv6 path is back");
    assert!(t.gw.run("nft", &["list", "tables"]).contains("admin_rules"));
    drop(gw.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_failing_the_handshake_n_times_is_quarantined() {
    let t = Topology::new();
    let _plc = start_plc(&t.ot, SocketAddr::from((t.ot_addr, 502)));
    let gw = Gateway::start(&t, 3);
    let intruder = gw.pki.client(&gw.pki.intruder).unwrap();
    for attempt in 1..=3 {
        // A certificate from another CA: the handshake (or the first exchange) fails.
        if let Ok(mut c) = client_from_it(&t, intruder.clone()).await {
            assert!(
                c.request(1, &[3, 0, 0, 0, 1]).await.is_err(),
                "attempt {attempt} was served"
            );
        }
    }
    let q = wait_audit(&gw.audit, "source_quarantined");
    assert_eq!(q["address"], t.it_addr.to_string());
    assert_eq!(q["failures"], 3);
    assert!(q.get("error").is_none(), "{q}");
    let list = gw.ztgate(&t.gw, &["firewall", "quarantine", "list"]);
    assert!(list.contains(&t.it_addr.to_string()), "{list}");
    // Now even a valid client from that address is dropped at the firewall.
    let hmi = gw.pki.client(&gw.pki.hmi).unwrap();
    match client_from_it(&t, hmi.clone()).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        Ok(_) => panic!("a quarantined source got through"),
    }
    // The operator releases it.
    gw.ztgate(
        &t.gw,
        &["firewall", "quarantine", "remove", &t.it_addr.to_string()],
    );
    let mut c = client_from_it(&t, hmi).await.expect("released");
    assert_eq!(
        c.request(1, &[3, 0, 1, 0, 1]).await.unwrap(),
        vec![3, 2, 0, 1]
    );
    gw.ztgate(&t.gw, &["firewall", "remove"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_ot_only_at_its_upstreams_and_ot_cannot_reach_its_listener() {
    let t = Topology::new();
    let _plc = start_plc(&t.ot, SocketAddr::from((t.ot_addr, 502)));
    // Other services on the PLC host, over IPv4 and IPv6, that only the firewall keeps the
    // gateway host from.
    let other = SocketAddr::from((t.ot_addr, 503));
    let other6 = SocketAddr::from((t.ot_addr6, 503));
    let _l = t.ot.listen(other).unwrap();
    let _l6 = t.ot.listen(other6).unwrap();
    let from_gw = |a: SocketAddr| t.gw.connect(a, DROPPED);
    from_gw(other).expect("before ztgate the gateway host reaches OT port 503");
    from_gw(other6).expect("before ztgate the gateway host reaches OT port 503 over IPv6");

    let gw = Gateway::start(&t, 0);
    assert_dropped(from_gw(other), "gateway host → OT port 503");
    assert_dropped(from_gw(other6), "gateway host → OT port 503 over IPv6");
    // The upstream itself is allowed: the proxied read works.
    let mut hmi = client_from_it(&t, gw.pki.client(&gw.pki.hmi).unwrap())
        .await
        .expect("mTLS");
    assert_eq!(
        hmi.request(1, &[3, 0, 2, 0, 1]).await.unwrap(),
        vec![3, 2, 0, 2]
    );
    // OT may not use the listener (it serves IT), not even at the address on the IT leg.
    assert_dropped(
        t.ot.connect(SocketAddr::from((t.gw_it_addr, 802)), DROPPED),
        "OT → the gateway's listener",
    );
    let status = gw.ztgate(&t.gw, &["firewall", "status"]);
    assert!(status.contains("output to ot"), "{status}");
    gw.ztgate(&t.gw, &["firewall", "remove"]);
    from_gw(other).expect("after firewall remove the gateway host reaches OT again");
}
