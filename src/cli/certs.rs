//! `croupier certs init`: the arguments, and what it prints (the work is in [`crate::certs`]).

use clap::Subcommand;
use std::path::PathBuf;

/// `croupier certs …`.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a CA, a server certificate and leaf certificates.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Agent id (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Client name (repeatable).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Admin name (repeatable).
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// Extra server certificate name for server-to-server calls (repeatable).
        #[arg(long = "server")]
        servers: Vec<String>,
        /// Extra host name or IP for the server certificate (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace existing files (a new CA invalidates every old certificate).
        #[arg(long)]
        force: bool,
        /// JSON output: `{"dir": ..., "written": [paths]}`.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `croupier certs` command.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init {
            dir,
            agents,
            clients,
            admins,
            servers,
            hosts,
            force,
            json,
        } => {
            let written = crate::certs::init(&crate::certs::CertsInit {
                dir: dir.clone(),
                agents,
                clients,
                admins,
                servers,
                hosts,
                force,
            })?;
            if json {
                let written: Vec<String> =
                    written.iter().map(|f| f.display().to_string()).collect();
                println!(
                    "{}",
                    serde_json::json!({"dir": dir.display().to_string(), "written": written})
                );
                return Ok(());
            }
            for f in &written {
                println!("wrote {}", f.display());
            }
            if written.is_empty() {
                println!(
                    "nothing to do: every certificate already exists in {}",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}
