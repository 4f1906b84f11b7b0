//! `ztgate firewall`: show, apply, remove, status, quarantine.

use super::{EXIT_CONFIG, load};
use crate::firewall::nft::Nft;
use crate::firewall::{Plan, to_json, to_text};
use clap::Subcommand;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum FirewallCommand {
    /// Print the ruleset the configuration gives, as nft text and as the JSON batch (no root).
    Show {
        #[arg(long, short, default_value = "/etc/ztgate/ztgate.toml")]
        config: PathBuf,
        /// Only the JSON batch.
        #[arg(long)]
        json: bool,
        /// Only the nft text.
        #[arg(long, conflicts_with = "json")]
        nft: bool,
    },
    /// Replace `table inet ztgate` with the configured ruleset (one transaction) and check it.
    Apply {
        #[arg(long, short, default_value = "/etc/ztgate/ztgate.toml")]
        config: PathBuf,
    },
    /// Delete `table inet ztgate`: the deliberate way out of fail-closed.
    Remove,
    /// Whether the table is loaded, its counters and the quarantine set.
    Status,
    /// Operate the quarantine set during an incident.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
}

#[derive(Subcommand, Debug)]
pub enum QuarantineCommand {
    /// Drop everything from ADDR for the given time.
    Add {
        addr: IpAddr,
        /// e.g. 10m, 1h
        #[arg(long, default_value = "10m")]
        time: String,
    },
    List,
    Remove {
        addr: IpAddr,
    },
}

fn plan(config: &std::path::Path) -> Result<Plan, ExitCode> {
    let config = load(config)?;
    Plan::from_config(&config).ok_or_else(|| {
        eprintln!(
            "{}: no [firewall] table: ztgate does not manage the firewall",
            config.source.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ztgate firewall: {e}");
    ExitCode::from(1)
}

pub fn main(command: FirewallCommand) -> ExitCode {
    let nft = Nft::default();
    match command {
        FirewallCommand::Show {
            config,
            json,
            nft: text_only,
        } => {
            let plan = match plan(&config) {
                Ok(p) => p,
                Err(code) => return code,
            };
            if !json {
                print!("{}", to_text(&plan));
            }
            if !text_only {
                if !json {
                    println!();
                }
                match serde_json::to_string_pretty(&to_json(&plan, &[])) {
                    Ok(j) => println!("{j}"),
                    Err(e) => return fail(e),
                }
            }
            ExitCode::SUCCESS
        }
        FirewallCommand::Apply { config } => {
            let plan = match plan(&config) {
                Ok(p) => p,
                Err(code) => return code,
            };
            match nft.apply(&plan) {
                Ok(()) => {
                    println!(
                        "table inet {} applied and verified ({} rules)",
                        crate::firewall::TABLE,
                        plan.rules.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        FirewallCommand::Remove => match nft.remove() {
            Ok(true) => {
                println!("table inet {} removed", crate::firewall::TABLE);
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("table inet {} was not loaded", crate::firewall::TABLE);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        FirewallCommand::Status => match nft.counters() {
            Ok(None) => {
                println!("table inet {} is not loaded", crate::firewall::TABLE);
                ExitCode::from(3)
            }
            Ok(Some(counters)) => {
                println!("table inet {} loaded", crate::firewall::TABLE);
                for c in counters {
                    println!(
                        "  {:<8} {:<40} {:>10} packets {:>12} bytes",
                        c.chain, c.comment, c.packets, c.bytes
                    );
                }
                match nft.quarantine_list() {
                    Ok(q) if q.is_empty() => println!("quarantine: empty"),
                    Ok(q) => {
                        for e in q {
                            println!("quarantine: {} ({} s left)", e.addr, e.seconds_left);
                        }
                    }
                    Err(e) => return fail(e),
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        FirewallCommand::Quarantine(q) => match q {
            QuarantineCommand::Add { addr, time } => {
                let seconds = match crate::config::parse_duration(&time) {
                    Ok(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
                    Err(e) => {
                        eprintln!("ztgate firewall quarantine: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                };
                match nft.quarantine_add(addr, seconds) {
                    Ok(()) => {
                        println!("{addr} quarantined for {time}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            QuarantineCommand::List => match nft.quarantine_list() {
                Ok(list) => {
                    for e in list {
                        println!("{} {}", e.addr, e.seconds_left);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            QuarantineCommand::Remove { addr } => match nft.quarantine_remove(addr) {
                Ok(()) => {
                    println!("{addr} released");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
        },
    }
}
