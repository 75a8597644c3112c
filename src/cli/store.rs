//! `croupier store …`: inspect, repair, back up and restore the embedded store of a server's
//! data dir (the library side is `croupier_registry::store::embedded::{check, repair, backup,
//! restore}`).
//!
//! `--data-dir` is the server's data dir (its `--data-dir`); the store lives in its `store/`
//! subdirectory. A store dir itself (holding `store.log`) is accepted too.
//!
//! Exit codes: 0 when done (for `check`: a server would open the log, a torn last record
//! included), 2 when `check` finds damage, 1 on any other error.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use croupier_registry::store::StoreError;
use croupier_registry::store::embedded::{self, RepairMode};

/// `croupier store …`.
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Read the embedded store's log and report its records, keys and revision, and any torn
    /// last record or damage with where it is (exit code 2 on damage). Safe while a server runs.
    Check {
        /// The server's data dir.
        #[arg(long, env = "CROUPIER_DATA_DIR")]
        data_dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a damaged log from its good records, keeping a copy of the original next to it.
    /// Refused while a server has the data dir open.
    Repair {
        /// The server's data dir.
        #[arg(long, env = "CROUPIER_DATA_DIR")]
        data_dir: PathBuf,
        /// Also keep the readable records after the damage (each key at its newest readable
        /// revision) instead of only those before it. More data, but a key whose delete was
        /// lost comes back.
        #[arg(long)]
        salvage: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent snapshot of the embedded store to a file; works while a server runs.
    Backup {
        /// The server's data dir.
        #[arg(long, env = "CROUPIER_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file to write.
        #[arg(long)]
        out: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the embedded store with a backup, after checking the backup; the replaced log is
    /// kept next to it. Refused while a server has the data dir open.
    Restore {
        /// The server's data dir (created if needed).
        #[arg(long, env = "CROUPIER_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file (from `croupier store backup`).
        #[arg(long)]
        from: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `croupier store` command; returns the exit code.
pub fn run(cmd: StoreCommand) -> anyhow::Result<i32> {
    match cmd {
        StoreCommand::Check { data_dir, json } => {
            let dir = existing_store_dir(&data_dir)?;
            let report = embedded::check(&dir).map_err(|e| failed("checking the store", e))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
                if let Some(c) = &report.corruption {
                    let d = data_dir.display();
                    println!(
                        "a server refuses to start on this log. `croupier store repair --data-dir \
                         {d}` keeps the records before line {} (and a copy of the original); with \
                         --salvage it also keeps what is readable after it",
                        c.line
                    );
                }
            }
            Ok(if report.is_corrupt() { 2 } else { 0 })
        }
        StoreCommand::Repair {
            data_dir,
            salvage,
            json,
        } => {
            let dir = existing_store_dir(&data_dir)?;
            let mode = if salvage {
                RepairMode::Salvage
            } else {
                RepairMode::Prefix
            };
            let report = embedded::repair(&dir, mode).map_err(|e| {
                failed(&format!("repairing the store in {}", data_dir.display()), e)
            })?;
            show(&report, json)?;
            Ok(0)
        }
        StoreCommand::Backup {
            data_dir,
            out,
            json,
        } => {
            let dir = existing_store_dir(&data_dir)?;
            match embedded::backup(&dir, &out) {
                Ok(report) => show(&report, json)?,
                Err(e @ StoreError::Corrupt(_)) => bail!(
                    "{e}; nothing was backed up. See `croupier store check --data-dir {}`",
                    data_dir.display()
                ),
                Err(e) => return Err(failed("backing up the store", e)),
            }
            Ok(0)
        }
        StoreCommand::Restore {
            data_dir,
            from,
            json,
        } => {
            let dir = store_dir(&data_dir);
            let report = embedded::restore(&dir, &from).map_err(|e| {
                let doing = format!("restoring {} into {}", from.display(), data_dir.display());
                failed(&doing, e)
            })?;
            show(&report, json)?;
            if !json {
                println!(
                    "start the server with --data-dir {} to serve it",
                    data_dir.display()
                );
            }
            Ok(0)
        }
    }
}

/// Prints a report: as one JSON object with `--json`, else as text.
fn show(report: &(impl std::fmt::Display + serde::Serialize), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `doing: error`, the store error's message once (its I/O source says the same again).
fn failed(doing: &str, e: StoreError) -> anyhow::Error {
    anyhow::anyhow!("{doing}: {e}")
}

/// The store dir of a server data dir: `<dir>/store`, or `dir` itself when it is a store dir
/// (it holds `store.log` or `LOCK` and has no `store/`).
fn store_dir(dir: &Path) -> PathBuf {
    let sub = dir.join("store");
    if !sub.is_dir() && (dir.join("store.log").exists() || dir.join("LOCK").exists()) {
        dir.to_owned()
    } else {
        sub
    }
}

/// [`store_dir`], which must exist.
fn existing_store_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let store = store_dir(dir);
    if !store.is_dir() {
        bail!(
            "there is no embedded store in {} (looked for {}): give the --data-dir of a server \
             that has run",
            dir.display(),
            store.display()
        );
    }
    Ok(store)
}
