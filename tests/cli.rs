//! The `ztgate` binary as an engineer uses it: `check`, `explain`, `ca`, `demo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ztgate");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ztgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("ztgate runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_passes_on_the_shipped_example() {
    let config = repo().join("ztgate.toml");
    let out = ztgate(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ok (2 listener(s), 2 service(s), 4 role(s), 9 rule(s), 0 warning(s))"),
        "{stdout}"
    );
}

/// Copies the shipped policies into `dir/policies`.
fn shipped_policies_into(dir: &Path) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    for e in std::fs::read_dir(repo().join("policies")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join("policies").join(p.file_name().unwrap())).unwrap();
    }
}

/// Every file in tests/fixtures/config/invalid/ carries its exact expected errors as
/// `# expect:` lines (`{dir}` stands for the temp dir). `policy-*` files are one policy file
/// beside the shipped ztgate.toml; `main-*` files are a ztgate.toml beside the shipped policies.
#[test]
fn check_points_at_file_line_and_column_of_every_error() {
    let fixtures = repo().join("tests/fixtures/config/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 9,
        "invalid config fixtures missing: {cases:?}"
    );
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let body = std::fs::read_to_string(&case).unwrap();
        let expect_path = case.with_extension("expected");
        let expected = std::fs::read_to_string(&expect_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file", name));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ztgate.toml");
        if name.starts_with("main-") {
            std::fs::write(&config, &body).unwrap();
            shipped_policies_into(dir.path());
        } else {
            std::fs::copy(repo().join("ztgate.toml"), &config).unwrap();
            std::fs::create_dir_all(dir.path().join("policies")).unwrap();
            std::fs::write(dir.path().join("policies").join(&name), &body).unwrap();
        }
        let out = ztgate(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(64), "{name}: {}", text(&out.stderr));
        let d = dir.path().display().to_string();
        let errors: Vec<String> = text(&out.stderr)
            .lines()
            .filter(|l| l.starts_with(&d))
            .map(|l| l.replace(&d, "{dir}"))
            .collect();
        let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(errors, expected, "{name}");
    }
}

/// `ztgate explain` on the shipped example.
fn explain(identity: &str, service: &str, request: &str) -> Output {
    let config = repo().join("ztgate.toml");
    ztgate(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--identity",
        identity,
        "--service",
        service,
        "--modbus",
        request,
    ])
}

#[test]
fn explain_names_the_rule_that_decides() {
    let hmi = "spiffe://plant1/line1/hmi/hmi-01";
    let out = explain(
        hmi,
        "plc-line1",
        "write_single_register unit=1 address=105 value=2000",
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("DENY: value 2000 for register 105 outside the bounds 0..=1500"),
        "{stdout}"
    );
    assert!(
        stdout.contains("closest rule: \"operator-setpoints\""),
        "{stdout}"
    );

    let out = explain(
        hmi,
        "plc-line1",
        "write_single_register unit=1 address=105 value=1200",
    );
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("ALLOW by rule \"operator-setpoints\""));

    let out = explain(
        "historian-01",
        "plc-line1",
        "read_holding_registers address=0 quantity=126",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("REFUSED before policy: quantity 126 outside 1..=125"));

    let out = explain(hmi, "nope", "read_coils address=0");
    assert_eq!(out.status.code(), Some(64));
}

/// `ztgate explain --mqtt` on the shipped example (policies/mqtt-line1.toml).
fn explain_mqtt(identity: &str, request: &str) -> (Option<i32>, String) {
    let config = repo().join("ztgate.toml");
    let out = ztgate(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--identity",
        identity,
        "--service",
        "broker-line1",
        "--mqtt",
        request,
    ]);
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn explain_mqtt_substitutes_the_identity_and_names_the_rule() {
    let (code, out) = explain_mqtt("s-7", "publish topic=plant1/line1/s-7/telemetry qos=1");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ALLOW by rule \"sensor-telemetry\""), "{out}");

    // Another sensor's topic: the {identity} filter does not reach it.
    let (code, out) = explain_mqtt("s-7", "publish topic=plant1/line1/s-8/telemetry qos=1");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DENY: no rule allows this topic"), "{out}");

    let (code, out) = explain_mqtt("s-7", "publish topic=plant1/line1/s-7/telemetry qos=2");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("DENY: QoS 2 above the rule's max_qos 1"),
        "{out}"
    );
    assert!(out.contains("closest rule: \"sensor-telemetry\""), "{out}");

    let (code, out) = explain_mqtt(
        "s-7",
        "publish topic=plant1/line1/s-7/telemetry retain=true",
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("retain flag set"), "{out}");

    let (code, out) = explain_mqtt("s-7", "subscribe filter=plant1/line1/s-7/cmd/# qos=2");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("granted QoS 1"), "{out}");

    let (code, out) = explain_mqtt("s-7", "subscribe filter=plant1/#");
    assert_eq!(code, Some(1), "{out}");

    let (code, out) = explain_mqtt(
        "historian-01",
        "subscribe filter=plant1/line1/+/telemetry/#",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ALLOW by rule \"historian-mqtt\""), "{out}");

    let (code, out) = explain_mqtt("s-7", "connect client_id=s-8");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("client id is not the certificate identity"),
        "{out}"
    );

    let (code, out) = explain_mqtt(
        "s-7",
        "connect client_id=s-7 will_topic=plant1/line1/s-8/status",
    );
    assert_eq!(code, Some(1), "{out}");

    // Not a topic name: a usage error, not a decision.
    let (code, out) = explain_mqtt("s-7", "publish topic=plant1/+/x");
    assert_eq!(code, Some(64), "{out}");
}

#[test]
fn ca_makes_a_pki_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_s = certs.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = ztgate(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    run(&["ca", "init", "--dir", certs_s, "--name", "plant1 CA"]);
    run(&[
        "ca",
        "issue",
        "--dir",
        certs_s,
        "--name",
        "gateway",
        "--server",
        "--dns",
        "plc-line1",
    ]);
    run(&[
        "ca",
        "issue",
        "--dir",
        certs_s,
        "--name",
        "hmi-01",
        "--uri",
        "spiffe://plant1/line1/hmi/hmi-01",
        "--role",
        "operator",
    ]);
    // Never replaces an existing CA.
    assert!(!ztgate(&["ca", "init", "--dir", certs_s]).status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("hmi-01.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The shipped config with these files: check loads the TLS material too.
    std::fs::copy(repo().join("ztgate.toml"), dir.path().join("ztgate.toml")).unwrap();
    shipped_policies_into(dir.path());
    let config = dir.path().join("ztgate.toml");
    let out = ztgate(&["check", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("not checked"));
    // A broken key is caught by check.
    std::fs::write(certs.join("gateway.key"), "not a key").unwrap();
    let out = ztgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("gateway.key"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_runs_the_whole_story_and_exits_zero() {
    let out = ztgate(&["demo"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("Everything happened as the policy says"));
    assert!(!stdout.contains('✘'), "{stdout}");
    assert!(stdout.contains("\"event\":\"request_denied\""));
}

#[test]
fn run_refuses_a_bad_config_with_exit_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ztgate.toml");
    std::fs::write(&config, "[tls]\nclient_ca = 1\n").unwrap();
    let out = ztgate(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("ztgate.toml:2:13"),
        "{}",
        text(&out.stderr)
    );
}

/// Polls (bounded) the audit file for an event of `kind`.
fn wait_audit(path: &Path, kind: &str) -> serde_json::Value {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path) {
            // A line still being written does not parse yet: it is read again next round.
            for v in text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            {
                if v["event"] == kind {
                    return v;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no {kind} event in {} within 5 s", path.display());
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_on_sighup_and_stops_on_sigterm() {
    let plc = ztgate::demo::plc::Plc::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = ztgate::demo::DemoPki::create(dir.path()).unwrap();
    shipped_policies_into(dir.path());
    let config = repo().join("ztgate.toml");
    // Without the [firewall] part: this test runs on the host, whose firewall is not ours.
    let shipped = std::fs::read_to_string(&config).unwrap();
    let (without_firewall, _) = shipped
        .split_once("# --- Segmentation")
        .expect("the shipped config has its segmentation part at the end");
    let text = without_firewall
        .replace("zones = [\"it\"]", "")
        .replace("certs/ca.pem", "ca.pem")
        .replace("certs/gateway.pem", "gateway.pem")
        .replace("certs/gateway.key", "gateway.key")
        .replace("0.0.0.0:802", "127.0.0.1:0")
        .replace("10.10.1.10:502", &plc.addr.to_string())
        .replace("/var/log/ztgate/audit.jsonl", "audit.jsonl");
    let config = dir.path().join("ztgate.toml");
    std::fs::write(&config, text).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let child = Child(
        Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "off")
            .spawn()
            .unwrap(),
    );
    // Readiness: the gateway_started event names the bound address.
    let started = wait_audit(&audit, "gateway_started");
    let addr: std::net::SocketAddr = started["listeners"][0]
        .as_str()
        .and_then(|l| l.split_once('='))
        .and_then(|(_, a)| a.parse().ok())
        .expect("listener address");
    let mut hmi = ztgate::demo::client::connect_tls(addr, pki.client(&pki.hmi).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        hmi.request(1, &[6, 0, 105, 0, 9]).await.unwrap(),
        vec![6, 0, 105, 0, 9]
    );

    // Tighten the setpoint bounds and reload: the open session gets the new policy.
    let line1 = dir.path().join("policies/line1.toml");
    let policy = std::fs::read_to_string(&line1).unwrap();
    std::fs::write(&line1, policy.replace("max = 1500", "max = 5")).unwrap();
    signal(&child, "-HUP");
    let reloaded = wait_audit(&audit, "policy_reloaded");
    assert_eq!(reloaded["rules"], 9);
    assert_eq!(
        hmi.request(1, &[6, 0, 105, 0, 9]).await.unwrap(),
        vec![0x86, 0x01]
    );

    // A broken policy is refused and the running one stays.
    std::fs::write(&line1, "[[rule]]\nid = \"x\"\nbogus = 1\n").unwrap();
    signal(&child, "-HUP");
    let rejected = wait_audit(&audit, "policy_reload_rejected");
    assert!(
        rejected["errors"][0]
            .as_str()
            .unwrap()
            .contains("line1.toml:3:1: unknown field `bogus`")
    );
    assert_eq!(
        hmi.request(1, &[6, 0, 105, 0, 5]).await.unwrap(),
        vec![6, 0, 105, 0, 5]
    );

    signal(&child, "-TERM");
    let mut child = child;
    let mut status = None;
    for _ in 0..500 {
        status = child.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = status.expect("ztgate exits within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    wait_audit(&audit, "gateway_stopping");
}

#[test]
fn run_refuses_to_start_when_the_enforced_firewall_cannot_be_applied() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("ztgate.toml"), dir.path().join("ztgate.toml")).unwrap();
    shipped_policies_into(dir.path());
    // No nft on the PATH: the shipped config enforces its firewall, so ztgate must not start.
    let out = Command::new(BIN)
        .args([
            "run",
            "--config",
            dir.path().join("ztgate.toml").to_str().unwrap(),
        ])
        .env("PATH", dir.path())
        .env("RUST_LOG", "off")
        .output()
        .expect("ztgate runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`nft` not found: install the nftables package"),
        "{stderr}"
    );
    assert!(stderr.contains("not starting"), "{stderr}");
}

#[test]
fn firewall_show_prints_the_ruleset_without_root() {
    let config = repo().join("ztgate.toml");
    let out = ztgate(&[
        "firewall",
        "show",
        "--config",
        config.to_str().unwrap(),
        "--nft",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected =
        std::fs::read_to_string(repo().join("tests/fixtures/firewall/example.nft")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    let out = ztgate(&[
        "firewall",
        "show",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["nftables"][1]["delete"]["table"]["name"], "ztgate");
}

#[test]
fn firewall_apply_without_cap_net_admin_says_so() {
    use std::os::unix::fs::PermissionsExt;
    // Everything the unprivileged run needs, in a directory it may read (the checkout may not be).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("ztgate");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::copy(repo().join("ztgate.toml"), dir.path().join("ztgate.toml")).unwrap();
    shipped_policies_into(dir.path());
    for entry in walk(dir.path()) {
        let mode = if entry.is_dir() || entry == bin {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // As nobody: nft is refused by the kernel, and ztgate says what is missing.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["firewall", "apply", "--config"])
        .arg(dir.path().join("ztgate.toml"))
        .output()
        .expect("setpriv runs (util-linux; the tests run as root)");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs CAP_NET_ADMIN"),
        "{}",
        text(&out.stderr)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
