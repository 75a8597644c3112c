//! The arguments of `croupier certs init` (the work is in [`crate::certs`]).

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
    },
}
