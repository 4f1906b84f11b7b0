//! `ztgate demo`: the whole gateway on loopback with nothing but the binary.
//!
//! A throw-away PKI (rcgen) in a temp dir, a simulated PLC (a real Modbus server), the gateway
//! with the shipped example configuration and policies (embedded at build time), and a scripted
//! HMI, historian and intruder. It prints what happened and the audit events, checks every
//! outcome against what the policy says must happen, and fails if any differs.

pub mod client;
pub mod plc;

use crate::config::raw::RawConfig;
use crate::config::{Config, SourceFile};
use crate::gateway::Gateway;
use crate::pki::{Ca, CertSpec, IssuedCert};
use crate::tls::client_config;
use anyhow::{Context, bail};
use client::{ModbusClient, connect_tls};
use std::net::SocketAddr;
use std::path::Path;
use toml::Spanned;

/// The shipped example, embedded so the demo needs no files.
pub const EXAMPLE_CONFIG: &str = include_str!("../../ztgate.toml");
pub const EXAMPLE_POLICIES: &[(&str, &str)] = &[
    (
        "policies/roles.toml",
        include_str!("../../policies/roles.toml"),
    ),
    (
        "policies/line1.toml",
        include_str!("../../policies/line1.toml"),
    ),
];

/// Identities of the demo's clients (they match `policies/roles.toml`).
pub const HMI_URI: &str = "spiffe://plant1/line1/hmi/hmi-01";
pub const HISTORIAN_CN: &str = "historian-01";

/// The example configuration rewritten for loopback: listeners on 127.0.0.1 port 0, the
/// service's upstream at `plc`, TLS files and the audit file in `dir`.
pub fn example_config(dir: &Path, plc: SocketAddr) -> Result<Config, crate::config::ConfigErrors> {
    let main = SourceFile::new("ztgate.toml (embedded example)", EXAMPLE_CONFIG);
    let mut raw: RawConfig = main
        .parse()
        .map_err(|e| crate::config::ConfigErrors(vec![e]))?;
    let here = |s: String| Spanned::new(0..0, s);
    raw.tls.client_ca = here(dir.join("ca.pem").display().to_string());
    raw.tls.cert = here(dir.join("gateway.pem").display().to_string());
    raw.tls.key = here(dir.join("gateway.key").display().to_string());
    // The demo's peer is a simulated PLC: the example's MQTT listener and broker stay out
    // (their policies are not embedded either; tests/mqtt_gateway.rs runs them against a real
    // Mosquitto).
    raw.services.retain(|s| s.protocol.get_ref() == "modbus");
    let modbus: Vec<String> = raw
        .services
        .iter()
        .map(|s| s.name.get_ref().clone())
        .collect();
    raw.listeners.retain(|l| {
        l.default_service
            .as_ref()
            .is_none_or(|d| modbus.contains(d.get_ref()))
    });
    for l in &mut raw.listeners {
        l.bind = here("127.0.0.1:0".to_string());
        l.zones = None;
    }
    // The demo runs without root and must never touch the host's firewall.
    raw.zones.clear();
    raw.firewall = None;
    for s in &mut raw.services {
        s.upstream = here(plc.to_string());
    }
    raw.audit.file = Some(here(dir.join("audit.jsonl").display().to_string()));
    raw.audit.stdout = false;
    let policies: Vec<SourceFile> = EXAMPLE_POLICIES
        .iter()
        .map(|(name, text)| SourceFile::new(*name, *text))
        .collect();
    Config::compile(&main, raw, &policies, dir)
}

/// The demo's PKI: a CA, the gateway's certificate, the clients' certificates.
pub struct DemoPki {
    pub ca: Ca,
    pub hmi: IssuedCert,
    pub historian: IssuedCert,
    /// Signed by a different CA: must be refused at the handshake.
    pub intruder: IssuedCert,
}

impl DemoPki {
    /// Makes the PKI and writes the gateway's files (`ca.pem`, `gateway.pem`, `gateway.key`)
    /// into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<DemoPki> {
        let ca = Ca::generate("ztgate demo CA", 1)?;
        let gateway = ca.issue_server(
            &CertSpec::new("ztgate demo gateway", 1)
                .with_dns("plc-line1")
                .with_dns("localhost")
                .with_dns("127.0.0.1"),
        )?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
        crate::pki::write_files(dir, "gateway", &gateway)?;
        let hmi = ca.issue_client(&CertSpec::new("hmi-01", 1).with_uri(HMI_URI))?;
        let historian = ca.issue_client(&CertSpec::new(HISTORIAN_CN, 1))?;
        let rogue = Ca::generate("rogue CA", 1)?;
        let intruder = rogue.issue_client(&CertSpec::new("intruder", 1).with_uri(HMI_URI))?;
        Ok(DemoPki {
            ca,
            hmi,
            historian,
            intruder,
        })
    }

    pub fn client(
        &self,
        cert: &IssuedCert,
    ) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        Ok(client_config(
            self.ca.cert_pem().as_bytes(),
            Some((cert.cert_pem.as_bytes(), cert.key_pem.expose().as_bytes())),
            crate::config::TlsVersions {
                tls12: true,
                tls13: true,
            },
        )?)
    }
}

fn describe(pdu: &[u8]) -> String {
    match pdu {
        [f, code] if f & 0x80 != 0 => format!("exception {code:#04x}"),
        [3 | 4, n, data @ ..] if data.len() == usize::from(*n) => {
            let values: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            format!("values {values:?}")
        }
        [6, a0, a1, v0, v1] => format!(
            "echo: register {} = {}",
            u16::from_be_bytes([*a0, *a1]),
            u16::from_be_bytes([*v0, *v1])
        ),
        other => format!("{} bytes", other.len()),
    }
}

struct Story {
    failures: Vec<String>,
}

impl Story {
    async fn step<S>(
        &mut self,
        client: &mut ModbusClient<S>,
        what: &str,
        pdu: &[u8],
        expect_exception: Option<u8>,
    ) -> anyhow::Result<Vec<u8>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let response = client
            .request(1, pdu)
            .await
            .with_context(|| what.to_string())?;
        let exception = match response.as_slice() {
            [f, code] if f & 0x80 != 0 => Some(*code),
            _ => None,
        };
        let ok = exception == expect_exception;
        println!(
            "  {} {what:<58} → {}",
            if ok { "✔" } else { "✘" },
            describe(&response)
        );
        if !ok {
            self.failures.push(format!(
                "{what}: expected {expect_exception:?}, got {exception:?}"
            ));
        }
        Ok(response)
    }
}

/// Runs the demo; `Err` if anything did not happen the way the policy says.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("ztgate-demo-").tempdir()?;
    println!("ztgate demo: a gateway between an HMI and a PLC, all on loopback\n");
    let pki = DemoPki::create(dir.path())?;
    println!("1. Throw-away PKI in {} (rcgen):", dir.path().display());
    println!("   CA \"ztgate demo CA\"; gateway certificate; HMI {HMI_URI} (role operator);");
    println!("   historian CN={HISTORIAN_CN} (role historian); an intruder signed by another CA\n");

    let plc = plc::Plc::start("127.0.0.1:0".parse()?).await?;
    println!(
        "2. Simulated PLC plc-line1 (tokio-modbus server) on {}",
        plc.addr
    );
    println!("   holding register i = i, input register i = 1000 + i, for addresses 0..999\n");

    let config = example_config(dir.path(), plc.addr).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateway = Gateway::start(config).await?;
    let addr = gateway
        .address("modbus-security")
        .context("example listener missing")?;
    println!(
        "3. Gateway on {addr} with the example policy ({} rules); the PLC is reachable only through it\n",
        gateway.shared.policy.load().model().rules.len()
    );

    let mut story = Story {
        failures: Vec::new(),
    };
    println!(
        "4. The HMI ({HMI_URI}) connects with its certificate, no SNI (like a Modbus/TCP Security client):"
    );
    let mut hmi = connect_tls(addr, pki.client(&pki.hmi)?, None).await?;
    story
        .step(
            &mut hmi,
            "read holding registers 0..4",
            &[3, 0, 0, 0, 5],
            None,
        )
        .await?;
    story
        .step(
            &mut hmi,
            "read input registers 10..12",
            &[4, 0, 10, 0, 3],
            None,
        )
        .await?;
    story
        .step(
            &mut hmi,
            "write setpoint register 105 = 1200 (bounds 0..1500)",
            &[6, 0, 105, 0x04, 0xB0],
            None,
        )
        .await?;
    story
        .step(
            &mut hmi,
            "write setpoint register 105 = 2000 (outside its bounds)",
            &[6, 0, 105, 0x07, 0xD0],
            Some(0x01),
        )
        .await?;
    story
        .step(
            &mut hmi,
            "write register 5 (not a setpoint)",
            &[6, 0, 5, 0, 42],
            Some(0x01),
        )
        .await?;
    story
        .step(
            &mut hmi,
            "write coil 3 (operators may not write coils)",
            &[5, 0, 3, 0xFF, 0],
            Some(0x01),
        )
        .await?;
    story
        .step(
            &mut hmi,
            "diagnostics (function 8)",
            &[8, 0, 0, 0x12, 0x34],
            Some(0x01),
        )
        .await?;
    story
        .step(
            &mut hmi,
            "read 126 registers (over the protocol limit of 125)",
            &[3, 0, 0, 0, 126],
            Some(0x03),
        )
        .await?;
    let value = plc.holding(105);
    let ok = value == Some(1200);
    println!(
        "  {} the PLC holds register 105 = {value:?}: the out-of-bounds write never reached it",
        if ok { "✔" } else { "✘" }
    );
    if !ok {
        story
            .failures
            .push(format!("register 105 is {value:?}, expected 1200"));
    }
    drop(hmi);

    println!("\n5. The historian (CN={HISTORIAN_CN}) connects with SNI plc-line1:");
    let mut historian = connect_tls(addr, pki.client(&pki.historian)?, Some("plc-line1")).await?;
    story
        .step(
            &mut historian,
            "read holding registers 100..101",
            &[3, 0, 100, 0, 2],
            None,
        )
        .await?;
    story
        .step(
            &mut historian,
            "write setpoint 105 (historians only read)",
            &[6, 0, 105, 0, 1],
            Some(0x01),
        )
        .await?;
    drop(historian);

    println!("\n6. An intruder with a certificate from another CA:");
    match connect_tls(addr, pki.client(&pki.intruder)?, None).await {
        Err(e) => println!("  ✔ refused at the TLS handshake ({e})"),
        Ok(mut c) => match c.request(1, &[3, 0, 0, 0, 1]).await {
            Err(e) => println!("  ✔ refused at the TLS handshake ({e})"),
            Ok(_) => {
                println!("  ✘ the intruder got an answer");
                story.failures.push("intruder was served".to_string());
            }
        },
    }

    let audit = gateway.audit().clone();
    gateway.shutdown().await;
    audit.flush().await;
    println!(
        "\n7. Audit events (JSON lines, {}):",
        dir.path().join("audit.jsonl").display()
    );
    let events = std::fs::read_to_string(dir.path().join("audit.jsonl"))?;
    for line in events.lines() {
        println!("  {line}");
    }
    let expected_kinds = [
        "session_opened",
        "request_denied",
        "write_allowed",
        "tls_rejected",
        "protocol_violation",
        "session_closed",
    ];
    for kind in expected_kinds {
        if !events.contains(&format!("\"event\":\"{kind}\"")) {
            story.failures.push(format!("no {kind} audit event"));
        }
    }

    if story.failures.is_empty() {
        println!(
            "\nEverything happened as the policy says. Files were in a temp dir, now removed."
        );
        Ok(())
    } else {
        bail!(
            "demo outcomes differ from the policy:\n  {}",
            story.failures.join("\n  ")
        )
    }
}
