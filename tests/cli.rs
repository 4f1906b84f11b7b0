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
        stdout.contains("ok (1 listener(s), 1 service(s), 3 role(s), 5 rule(s), 0 warning(s))"),
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

#[test]
fn explain_names_the_rule_that_decides() {
    let config = repo().join("ztgate.toml");
    let config = config.to_str().unwrap();
    let hmi = "spiffe://plant1/line1/hmi/hmi-01";
    let out = ztgate(&[
        "explain",
        "--config",
        config,
        "--identity",
        hmi,
        "--service",
        "plc-line1",
        "--modbus",
        "write_single_register unit=1 address=105 value=2000",
    ]);
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

    let out = ztgate(&[
        "explain",
        "--config",
        config,
        "--identity",
        hmi,
        "--service",
        "plc-line1",
        "--modbus",
        "write_single_register unit=1 address=105 value=1200",
    ]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("ALLOW by rule \"operator-setpoints\""));

    let out = ztgate(&[
        "explain",
        "--config",
        config,
        "--identity",
        "historian-01",
        "--service",
        "plc-line1",
        "--modbus",
        "read_holding_registers address=0 quantity=126",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("REFUSED before policy: quantity 126 outside 1..=125"));

    let out = ztgate(&[
        "explain",
        "--config",
        config,
        "--identity",
        hmi,
        "--service",
        "nope",
        "--modbus",
        "read_coils address=0",
    ]);
    assert_eq!(out.status.code(), Some(64));
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
