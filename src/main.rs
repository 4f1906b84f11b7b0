//! The `ztgate` binary: parse the command line, set up logging, hand over to `cli`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = ztgate::cli::Cli::parse();
    // The demo tells its own story on stdout; only problems go to the log there.
    let default_filter = match cli.command {
        ztgate::cli::Command::Demo => "warn",
        _ => "warn,ztgate=info",
    };
    // Operational logs go to stderr through tracing (RUST_LOG=debug for more); audit events
    // are separate (see docs/audit.md).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    ztgate::cli::main(cli)
}
