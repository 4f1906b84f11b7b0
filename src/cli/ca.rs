//! `ztgate ca`: a small PKI for a plant, in a directory (see certs/README.md).

use crate::pki::{Ca, CertSpec, IssuedCert, write_files};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a new CA: DIR/ca.pem and DIR/ca.key (refuses to overwrite an existing CA).
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "ztgate plant CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by DIR/ca.pem: DIR/NAME.pem and DIR/NAME.key.
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Subject CN, and the file name.
        #[arg(long)]
        name: String,
        /// URI SAN, e.g. spiffe://plant1/line1/hmi/hmi-01 (becomes the identity).
        #[arg(long)]
        uri: Option<String>,
        /// Modbus/TCP Security role extension.
        #[arg(long)]
        role: Option<String>,
        /// A server certificate (for the gateway) instead of a client certificate.
        #[arg(long)]
        server: bool,
        /// DNS or IP SANs of a server certificate; repeatable.
        #[arg(long = "dns")]
        dns: Vec<String>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let cert = std::fs::read_to_string(dir.join("ca.pem"))?;
    let key = std::fs::read_to_string(dir.join("ca.key"))?;
    Ok(Ca::from_pem(&cert, &key)?)
}

fn issue(dir: &Path, name: &str, spec: CertSpec, server: bool) -> anyhow::Result<()> {
    let ca = load_ca(dir)?;
    let cert: IssuedCert = if server {
        ca.issue_server(&spec)?
    } else {
        ca.issue_client(&spec)?
    };
    let (c, k) = write_files(dir, name, &cert)?;
    println!("wrote {} and {}", c.display(), k.display());
    Ok(())
}

pub fn main(command: CaCommand) -> ExitCode {
    let result = match command {
        CaCommand::Init { dir, name, days } => (|| {
            if dir.join("ca.key").exists() {
                anyhow::bail!(
                    "{} exists: refusing to replace a CA",
                    dir.join("ca.key").display()
                );
            }
            std::fs::create_dir_all(&dir)?;
            let ca = Ca::generate(&name, days)?;
            let (c, k) = write_files(&dir, "ca", &ca.to_issued_cert())?;
            println!(
                "wrote {} and {} (keep the key offline)",
                c.display(),
                k.display()
            );
            Ok(())
        })(),
        CaCommand::Issue {
            dir,
            name,
            uri,
            role,
            server,
            dns,
            days,
        } => {
            let mut spec = CertSpec::new(name.clone(), days);
            spec.uri = uri;
            spec.modbus_role = role;
            spec.dns_names = dns;
            issue(&dir, &name, spec, server)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztgate ca: {e:#}");
            ExitCode::from(1)
        }
    }
}
