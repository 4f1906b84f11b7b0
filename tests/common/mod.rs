//! Test harness: a throw-away PKI, a gateway on 127.0.0.1 port 0 in front of a real Modbus
//! server, clients with certificates, and the audit file.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use ztgate::config::{Config, SourceFile, TlsVersions};
use ztgate::demo::client::{ModbusClient, connect_tls};
use ztgate::gateway::Gateway;
use ztgate::pki::{Ca, CertSpec, IssuedCert};

pub const HMI: &str = "spiffe://plant1/line1/hmi/hmi-01";
pub const ENGINEER: &str = "spiffe://plant1/eng/laptop-7";
pub const HISTORIAN: &str = "historian-01";

pub type TlsClient = ModbusClient<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

pub struct Pki {
    pub ca: Ca,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let ca = Ca::generate("test CA", 1).expect("CA");
        let gateway = ca
            .issue_server(
                &CertSpec::new("gateway", 1)
                    .with_dns("plc-line1")
                    .with_dns("broker")
                    .with_dns("127.0.0.1"),
            )
            .expect("server cert");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
        ztgate::pki::write_files(dir, "gateway", &gateway).expect("write gateway cert");
        Pki {
            ca,
            dir: dir.to_path_buf(),
        }
    }

    /// A client certificate: `uri` becomes the identity, else `cn`.
    pub fn client(&self, cn: &str, uri: Option<&str>) -> IssuedCert {
        let mut spec = CertSpec::new(cn, 1);
        spec.uri = uri.map(str::to_string);
        self.ca.issue_client(&spec).expect("client cert")
    }

    /// A client certificate for `identity`: a `://` identity becomes a URI SAN, anything else
    /// the CN.
    pub fn for_identity(&self, identity: &str) -> IssuedCert {
        if identity.contains("://") {
            self.client("client", Some(identity))
        } else {
            self.client(identity, None)
        }
    }

    /// A client config (TLS 1.2 and 1.3) presenting a fresh certificate for `identity`.
    pub fn identity_config(&self, identity: &str) -> Arc<rustls::ClientConfig> {
        self.config(Some(&self.for_identity(identity)), BOTH)
    }

    pub fn config(
        &self,
        cert: Option<&IssuedCert>,
        versions: TlsVersions,
    ) -> Arc<rustls::ClientConfig> {
        ztgate::tls::client_config(
            self.ca.cert_pem().as_bytes(),
            cert.map(|c| (c.cert_pem.as_bytes(), c.key_pem.expose().as_bytes())),
            versions,
        )
        .expect("client config")
    }
}

pub const BOTH: TlsVersions = TlsVersions {
    tls12: true,
    tls13: true,
};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub audit_path: PathBuf,
}

/// Options for the gateway under test.
pub struct Options {
    /// Extra lines for the `[[service]]` table.
    pub service: String,
    /// Extra lines for the `[[listener]]` table.
    pub listener: String,
    /// Extra lines for `[limits]`.
    pub limits: String,
    /// `handshake_timeout` of `[tls]`.
    pub handshake_timeout: String,
    /// Policy files; the shipped `policies/` when empty.
    pub policies: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            service: String::new(),
            listener: "default_service = \"plc-line1\"".to_string(),
            limits: String::new(),
            handshake_timeout: "5s".to_string(),
            policies: Vec::new(),
        }
    }
}

pub fn shipped_policies() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("policies dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        // The MQTT policies name the example's broker service, which these tests have not.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mqtt-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no shipped policies");
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("read policy"),
            )
        })
        .collect()
}

pub fn config_text(dir: &Path, upstream: SocketAddr, opts: &Options) -> String {
    format!(
        r#"
[gateway]
name = "test-gw"
[tls]
client_ca = "{dir}/ca.pem"
cert = "{dir}/gateway.pem"
key = "{dir}/gateway.key"
handshake_timeout = "{handshake_timeout}"
[[listener]]
name = "modbus"
bind = "127.0.0.1:0"
{listener}
[[service]]
name = "plc-line1"
protocol = "modbus"
upstream = "{upstream}"
{service}
[limits]
{limits}
[audit]
file = "{dir}/audit.jsonl"
"#,
        dir = dir.display(),
        listener = opts.listener,
        service = opts.service,
        limits = opts.limits,
        handshake_timeout = opts.handshake_timeout,
    )
}

impl Env {
    pub async fn start(upstream: SocketAddr, opts: Options) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(dir.path());
        let policies = if opts.policies.is_empty() {
            shipped_policies()
        } else {
            opts.policies.clone()
        };
        let main = SourceFile::new("ztgate.toml", config_text(dir.path(), upstream, &opts));
        let policies: Vec<SourceFile> = policies
            .into_iter()
            .map(|(n, t)| SourceFile::new(format!("policies/{n}"), t))
            .collect();
        let config = Config::from_sources(&main, &policies, dir.path())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let addr = gateway.address("modbus").expect("listener");
        let audit_path = dir.path().join("audit.jsonl");
        Env {
            dir,
            pki,
            gateway: Some(gateway),
            addr,
            audit_path,
        }
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    /// Connects with a fresh client certificate for `identity` (a URI, else a CN).
    pub async fn connect(&self, identity: &str) -> TlsClient {
        self.try_connect(identity).await.expect("client connects")
    }

    pub async fn try_connect(&self, identity: &str) -> std::io::Result<TlsClient> {
        connect_tls(self.addr, self.pki.identity_config(identity), None).await
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

    /// Waits (bounded) until the audit so far satisfies `pred`.
    pub async fn wait_until(&self, pred: impl Fn(&[serde_json::Value]) -> bool) {
        for _ in 0..500 {
            if pred(&self.audit().await) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "audit condition not met within 5 s; audit: {:#?}",
            self.audit().await
        );
    }

    /// Waits (bounded) until an audit event of `kind` satisfies `pred`.
    pub async fn wait_event(
        &self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..500 {
            if let Some(e) = self.events(kind).await.into_iter().find(|e| pred(e)) {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "no {kind} audit event matched within 5 s; audit: {:#?}",
            self.audit().await
        );
    }
}

/// Response PDU of an exception, or `None`.
pub fn exception(pdu: &[u8]) -> Option<u8> {
    match pdu {
        [f, code] if f & 0x80 != 0 => Some(*code),
        _ => None,
    }
}

/// Reads one holding register through the gateway (FC3, unit 1) and returns its value.
pub async fn read_register<S>(c: &mut ModbusClient<S>, address: u16) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let [hi, lo] = address.to_be_bytes();
    let r = c.request(1, &[3, hi, lo, 0, 1]).await.expect("response");
    match registers(&r).as_slice() {
        [v] => *v,
        other => panic!("expected one register, got {other:?}"),
    }
}

/// Register values of an FC3/FC4 response PDU.
pub fn registers(pdu: &[u8]) -> Vec<u16> {
    match pdu {
        [3 | 4 | 23, n, data @ ..] if data.len() == usize::from(*n) => data
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
        other => panic!("not a register response: {other:?}"),
    }
}

/// pymodbus's Modbus TCP server as a child process (see tests/support/pymodbus_plc.py).
pub struct PyModbus {
    pub addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl PyModbus {
    pub fn start() -> PyModbus {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pymodbus_plc.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (scripts/test.sh installs pymodbus)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read readiness line");
        let port: u16 = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("pymodbus PLC did not start (got {line:?}); run scripts/test.sh, which installs pymodbus==3.16.1")
            });
        PyModbus {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdin,
        }
    }
}

impl Drop for PyModbus {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device that accepts TCP connections and never answers (a hung PLC). Keeps the accepted
/// sockets open so the gateway's only way out is its response timeout.
pub struct SilentDevice {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentDevice {
    pub async fn start() -> SilentDevice {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        SilentDevice { addr, task }
    }
}

impl Drop for SilentDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where nothing listens: bind port 0, note it, close it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
