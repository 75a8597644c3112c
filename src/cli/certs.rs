//! `croupier certs init|list|revoke`: the arguments ([`crate::certs::CertsInit`]) and what they
//! print (the work is in [`crate::certs`]).

use std::path::PathBuf;

use clap::Subcommand;

use crate::output::{clean, table};

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
    /// Show the certificates of a directory: identity, scopes, serial, expiry, revoked.
    List {
        /// The certificate directory.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// JSON output: `{"certificates": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Revoke certificates: add their serials to `DIR/revoked.txt`, which servers using that
    /// directory reload within seconds (config `revocation_list` for another file).
    Revoke {
        /// The certificate directory.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Certificates: file stems (`agent-node-1`), `.pem` paths or hex serials.
        #[arg(required = true)]
        certs: Vec<String>,
        /// JSON output: `{"revoked": [{"cert", "serial"}]}`.
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
        CertsCommand::List { dir, json } => {
            let certs = crate::certs::list(&dir)?;
            if json {
                println!("{}", serde_json::json!({ "certificates": certs }));
                return Ok(());
            }
            let now = croupier_registry::model::now_ms();
            let rows: Vec<Vec<String>> = certs
                .iter()
                .map(|c| {
                    let status = match (c.revoked, c.expired) {
                        (true, _) => "revoked",
                        (false, true) => "expired",
                        _ => "valid",
                    };
                    vec![
                        clean(&c.file),
                        clean(if c.identity.is_empty() {
                            "-"
                        } else {
                            &c.identity
                        }),
                        if c.scopes.is_empty() {
                            "unscoped".into()
                        } else {
                            clean(&c.scopes.join(","))
                        },
                        c.serial.clone(),
                        expiry(c.not_after, now),
                        status.into(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["FILE", "IDENTITY", "SCOPES", "SERIAL", "EXPIRES", "STATUS"],
                    &rows
                )
            );
        }
        CertsCommand::Revoke { dir, certs, json } => {
            let revoked = crate::certs::revoke(&dir, &certs)?;
            if json {
                let list: Vec<_> = revoked
                    .iter()
                    .map(|(c, s)| serde_json::json!({"cert": c, "serial": s}))
                    .collect();
                println!("{}", serde_json::json!({ "revoked": list }));
            } else {
                for (c, s) in &revoked {
                    println!("revoked {} (serial {s})", clean(c));
                }
                println!(
                    "servers reading {} refuse them within seconds",
                    dir.join(crate::certs::REVOKED_FILE).display()
                );
            }
        }
    }
    Ok(())
}

/// `2027-12-02T10:00:00Z (in 364d)`, or `(expired)`.
fn expiry(ms: i64, now: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let left = (ms - now) / 1000;
    let when = match left {
        i64::MIN..=-1 => "expired".to_owned(),
        0..=3599 => format!("in {}m", left / 60),
        3600..=172_799 => format!("in {}h", left / 3600),
        _ => format!("in {}d", left / 86_400),
    };
    format!("{} ({when})", humantime::format_rfc3339_seconds(at))
}
