//! `croupier certs init`: the arguments ([`crate::certs::CertsInit`]) and what it prints (the
//! work is in [`crate::certs`]).

use clap::Subcommand;

/// `croupier certs …`.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a CA, a server certificate and leaf certificates.
    Init {
        /// What to make.
        #[command(flatten)]
        init: crate::certs::CertsInit,
        /// JSON output: `{"dir": ..., "written": [paths]}`.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `croupier certs` command.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { init, json } => {
            let written = crate::certs::init(&init)?;
            let dir = init.dir.display();
            if json {
                let written: Vec<String> =
                    written.iter().map(|f| f.display().to_string()).collect();
                println!(
                    "{}",
                    serde_json::json!({"dir": dir.to_string(), "written": written})
                );
            } else if written.is_empty() {
                println!("nothing to do: every certificate already exists in {dir}");
            } else {
                for f in &written {
                    println!("wrote {}", f.display());
                }
            }
        }
    }
    Ok(())
}
