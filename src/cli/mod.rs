//! The `ztgate` command line: `run`, `check`, `explain`, `demo`, `ca`.
//!
//! Exit codes: 0 success; 1 a runtime failure (or, for `explain`, a denial); 64 a bad
//! configuration or bad arguments (before any port is bound).

mod ca;
pub mod explain;
mod firewall;

use crate::audit::AuditEvent;
use crate::config::Config;
use crate::firewall::Plan;
use crate::firewall::nft::Nft;
use crate::gateway::Gateway;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for configuration and usage errors (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "ztgate",
    version,
    about = "Zero-trust segmentation gateway for Modbus TCP between IT and OT"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "/etc/ztgate/ztgate.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and policies (like `nginx -t`); non-zero exit on error.
    Check {
        #[arg(long, short, default_value = "/etc/ztgate/ztgate.toml")]
        config: PathBuf,
    },
    /// Show the decision for one request and the rule that made it.
    Explain {
        #[arg(long, short, default_value = "/etc/ztgate/ztgate.toml")]
        config: PathBuf,
        /// The client's identity: its certificate's URI SAN, else its CN.
        #[arg(long)]
        identity: String,
        /// A role the certificate asserts (Modbus/TCP Security role extension); repeatable.
        #[arg(long = "certificate-role")]
        certificate_roles: Vec<String>,
        #[arg(long)]
        service: String,
        /// e.g. "write_single_register unit=1 address=105 value=2000"
        #[arg(long, required_unless_present = "mqtt", conflicts_with = "mqtt")]
        modbus: Option<String>,
        /// e.g. "publish topic=plant1/line1/s-7/telemetry qos=1", "subscribe filter=plant1/#",
        /// "connect client_id=s-7 will_topic=… will_qos=1"
        #[arg(long)]
        mqtt: Option<String>,
    },
    /// Run the whole gateway on loopback with a throw-away PKI, a simulated PLC and a scripted HMI.
    Demo,
    /// Make certificates: a CA, the gateway's certificate, device and user certificates.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// The nftables ruleset between the zones: show, apply, remove, status, quarantine.
    #[command(subcommand)]
    Firewall(firewall::FirewallCommand),
    /// Serve only the simulated PLC (for scripts/bench-load.sh): prints `READY <addr>` once
    /// bound, serves until SIGTERM/SIGINT or the end of stdin.
    SimPlc {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: std::net::SocketAddr,
    },
}

fn load(config: &Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{}: {} error(s)", config.display(), errors.0.len());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Explain {
            config,
            identity,
            certificate_roles,
            service,
            modbus,
            mqtt,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let result = match (modbus, mqtt) {
                (_, Some(mqtt)) => {
                    explain::explain_mqtt(&config, &identity, &certificate_roles, &service, &mqtt)
                }
                (Some(modbus), None) => {
                    explain::explain(&config, &identity, &certificate_roles, &service, &modbus)
                }
                (None, None) => Err("give --modbus \"…\" or --mqtt \"…\"".to_string()),
            };
            match result {
                Ok((allowed, text)) => {
                    print!("{text}");
                    if allowed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("explain: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Demo => {
            let result = runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(crate::demo::run()));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Ca(command) => ca::main(command),
        Command::Firewall(command) => firewall::main(command),
        Command::SimPlc { bind } => match runtime().map(|rt| rt.block_on(sim_plc(bind))) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) | Err(e) => {
                eprintln!("sim-plc: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// `ztgate sim-plc`: the demo's PLC alone, ended by a signal or by the end of stdin (so it
/// dies with the process that holds its stdin open).
async fn sim_plc(bind: std::net::SocketAddr) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let plc = crate::demo::plc::Plc::start(bind).await?;
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: a blocked stdin read must not hold up the runtime's shutdown.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = eof_tx.send(());
    });
    println!("READY {}", plc.addr);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = eof_rx => {}
    }
    drop(plc);
    Ok(())
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    // Like `nginx -t`: the files the gateway would load must load too. In a policy repository
    // (CI, an engineer's laptop) the keys are not there: say so, and check the rest.
    let tls = &config.tls;
    let upstream_tls: Vec<(&str, &crate::config::UpstreamTls)> = config
        .services
        .iter()
        .filter_map(|s| s.upstream_tls.as_ref().map(|t| (s.name.as_str(), t)))
        .collect();
    let missing: Vec<String> = [&tls.client_ca, &tls.cert, &tls.key]
        .into_iter()
        .chain(&tls.crls)
        .chain(upstream_tls.iter().flat_map(|(_, t)| {
            std::iter::once(&t.ca).chain(t.client_cert.iter().flat_map(|(c, k)| [c, k]))
        }))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        if let Err(e) = crate::tls::ServerMaterial::load(tls) {
            eprintln!("{}: tls: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
        for (service, t) in &upstream_tls {
            if let Err(e) = crate::session::UpstreamTlsClient::load(t) {
                eprintln!(
                    "{}: service \"{service}\" upstream_tls: {e}",
                    path.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        eprintln!(
            "warning: TLS files not found, not checked: {} (run `ztgate check` on the gateway to check them)",
            missing.join(", ")
        );
    }
    println!(
        "{}: ok ({} listener(s), {} service(s), {} role(s), {} rule(s), {} warning(s))",
        path.display(),
        config.listeners.len(),
        config.services.len(),
        config.policy.roles.len(),
        config.policy.rules.len(),
        config.warnings.len()
    );
    ExitCode::SUCCESS
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // Fail closed from the first packet: the firewall is in place before any listener opens.
    // With enforce = true a gateway that cannot put it in place does not start; with false it
    // starts without it and says so loudly.
    let firewall = Plan::from_config(&config);
    if let Some(plan) = &firewall {
        let enforce = config.firewall.as_ref().is_some_and(|f| f.enforce);
        match Nft::default().apply(plan) {
            Ok(()) => tracing::info!(rules = plan.rules.len(), "firewall applied and verified"),
            Err(e) if enforce => {
                eprintln!("ztgate: firewall: {e}");
                eprintln!(
                    "ztgate: not starting: [firewall] enforce = true and the ruleset is not in place"
                );
                return ExitCode::from(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "firewall NOT applied (enforce = false): running without segmentation")
            }
        }
    }
    let keep_on_exit = config.firewall.as_ref().is_none_or(|f| f.keep_on_exit);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("ztgate: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if let Some(plan) = &firewall {
            gateway.audit().emit(AuditEvent::FirewallApplied {
                rules: plan.rules.len(),
            });
        }
        let result = serve_until_signal(&gateway, path).await;
        gateway.shutdown().await;
        if firewall.is_some() && !keep_on_exit {
            match Nft::default().remove() {
                Ok(_) => tracing::info!("firewall table removed (keep_on_exit = false)"),
                Err(e) => eprintln!("ztgate: firewall: {e}"),
            }
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ztgate: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Whether two configurations have the same listeners (name, address, zones) and upstreams.
fn same_endpoints(running: &Config, new: &Config) -> bool {
    let listeners = |c: &Config| -> Vec<(String, std::net::SocketAddr, Vec<String>)> {
        c.listeners
            .iter()
            .map(|l| {
                let zones = l
                    .zones
                    .iter()
                    .filter_map(|z| c.zones.get(*z).map(|z| z.name.clone()))
                    .collect();
                (l.name.clone(), l.bind, zones)
            })
            .collect()
    };
    let upstreams = |c: &Config| -> Vec<(String, String)> {
        c.services
            .iter()
            .map(|s| (s.name.clone(), s.upstream.clone()))
            .collect()
    };
    listeners(running) == listeners(new) && upstreams(running) == upstreams(new)
}

/// Serves until SIGINT/SIGTERM; SIGHUP reloads the policy (a bad policy keeps the old one).
async fn serve_until_signal(gateway: &Gateway, path: &Path) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let source = path.display().to_string();
                match Config::load(path) {
                    Ok(config) => {
                        // Zones, listeners and services may have changed: re-apply (atomic, and
                        // the quarantine set is kept). A ruleset that fails keeps the old one.
                        // The running listeners and upstreams are the old ones until a
                        // restart: a ruleset for new ones would cut the running gateway off.
                        let endpoints_changed = !same_endpoints(&gateway.shared.config, &config);
                        if endpoints_changed && config.firewall.is_some() {
                            let reason = "listeners or services changed: the firewall keeps the running ruleset until ztgate restarts".to_string();
                            tracing::error!("{reason}");
                            gateway.audit().emit(AuditEvent::FirewallNotReapplied { reason });
                        }
                        if let Some(plan) = Plan::from_config(&config).filter(|_| !endpoints_changed) {
                            let applied = tokio::task::spawn_blocking(move || {
                                Nft::default().apply(&plan).map(|()| plan.rules.len())
                            })
                            .await;
                            match applied {
                                Ok(Ok(rules)) => gateway.audit().emit(AuditEvent::FirewallApplied { rules }),
                                Ok(Err(e)) => tracing::error!(error = %e, "firewall not re-applied: the previous ruleset stays"),
                                Err(e) => tracing::error!(error = %e, "firewall re-apply task failed"),
                            }
                        }
                        let rules = config.policy.rules.len();
                        gateway.reload_policy(crate::policy::Policy::compile(config.policy));
                        tracing::info!(rules, "policy reloaded (listeners and services need a restart)");
                        gateway.audit().emit(AuditEvent::PolicyReloaded { config: source, rules });
                    }
                    Err(errors) => {
                        tracing::error!(%errors, "reload refused: keeping the running policy");
                        gateway.audit().emit(AuditEvent::PolicyReloadRejected {
                            config: source,
                            errors: errors.0.iter().map(ToString::to_string).collect(),
                        });
                    }
                }
            }
        }
    }
}
