//! `croupier audit list|verify`: a server's audit records, and the check of a log's hash chain.
//!
//! Each server writes its own chain (`<data_dir>/audit.log`, rotated to `audit.log.1`, `.2`, …)
//! and checkpoints its head into the store. `list` asks one server for its records (its own view:
//! ask each replica with `--server`); `verify` reads the files themselves, and with
//! `--checkpoint` or `--ask-server` also checks that the chain still holds the head the server
//! checkpointed, so a cut tail is found too.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use croupier_control::audit::chain::{self, Head};
use croupier_proto::control::v1::ListAuditRequest;

use crate::cli::{Conn, dev_dir, exit, parse_duration, status_error};
use crate::output::clean;

/// `croupier audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List a server's audit records, newest first (admin certificate).
    List(ListArgs),
    /// Verify an audit log's hash chain and name the first bad record. Exits 0 when the chain
    /// is intact and 1 when it is not.
    Verify(VerifyArgs),
}

/// `croupier audit list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only records whose actor (or the identity it acted for) contains this.
    #[arg(long, default_value = "")]
    pub who: String,
    /// Only records about this function (or any target containing this: an agent id…).
    #[arg(long = "function", alias = "target", default_value = "")]
    pub target: String,
    /// Only this action: invoke, invoke_job, cancel_job, request_approval, approve, reject,
    /// put_policy, set_node_state, put_pipeline, delete_pipeline, register_agent,
    /// register_function, delete_function.
    #[arg(long, default_value = "")]
    pub action: String,
    /// Only records of the last DURATION (e.g. 15m, 2h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only records whose outcome starts with this: ok, PERMISSION_DENIED…
    #[arg(long, default_value = "")]
    pub outcome: String,
    /// At most this many (the server caps it at 5000).
    #[arg(long, default_value_t = 100)]
    pub limit: i32,
    /// JSON output: `{"server_id", "records": [...], "truncated", "checkpoint"}`.
    #[arg(long)]
    pub json: bool,
    /// Connection (identity defaults to the admin certificate).
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The log: a server's `audit.log` (its rotated files are verified with it, oldest first),
    /// or one rotated file on its own. Default: the `croupier dev` log.
    pub file: Option<PathBuf>,
    /// The head the server checkpointed, `SEQ:HASH` (from `audit list --json`): the chain must
    /// still hold that record.
    #[arg(long, conflicts_with = "ask_server")]
    pub checkpoint: Option<String>,
    /// Ask the server (--server, admin certificate) for the head it checkpointed.
    #[arg(long)]
    pub ask_server: bool,
    /// JSON output: `{"ok", "records", "first_seq", "head", "error"}`.
    #[arg(long)]
    pub json: bool,
    /// Connection, for --ask-server.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs a `croupier audit` command; returns the exit code.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::List(args) => list(args).await.map(|()| exit::OK),
        AuditCommand::Verify(args) => verify(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let since = args.since.map_or(0, |d| {
        croupier_registry::model::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    });
    let client = args.conn.client("admin-admin").await?;
    let resp = client
        .list_audit(ListAuditRequest {
            who: args.who,
            target: args.target,
            action: args.action,
            since,
            outcome: args.outcome,
            limit: args.limit,
        })
        .await
        .map_err(|s| status_error(&s))?;
    if args.json {
        let records: Vec<serde_json::Value> = resp
            .records
            .iter()
            .map(|r| serde_json::from_str(r).unwrap_or(serde_json::Value::Null))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "server_id": resp.server_id, "records": records, "truncated": resp.truncated,
                "checkpoint": {"seq": resp.checkpoint_seq, "hash": resp.checkpoint_hash},
            })
        );
        return Ok(());
    }
    eprintln!(
        "# server {}'s records (each replica keeps its own chain; ask the others with --server)",
        clean(&resp.server_id)
    );
    for line in &resp.records {
        let r: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let text = |k: &str| clean(r[k].as_str().unwrap_or_default());
        let behalf = match text("on_behalf_of") {
            s if s.is_empty() => String::new(),
            s => format!(" for {s}"),
        };
        println!(
            "{:>6}  {}  {}{}  {} {}  {}  {}",
            r["seq"].as_u64().unwrap_or(0),
            crate::output::time(r["at"].as_i64().unwrap_or(0)),
            text("who"),
            behalf,
            text("action"),
            text("target"),
            text("scope"),
            text("outcome"),
        );
    }
    if resp.truncated {
        eprintln!("# more records match: narrow the filter or raise --limit");
    }
    Ok(())
}

async fn verify(args: VerifyArgs) -> anyhow::Result<i32> {
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| dev_dir().join("data").join("audit.log"));
    if !file.exists() {
        return Err(exit::Failure {
            code: exit::LOCAL,
            message: format!(
                "{} does not exist; name a server's audit.log (in its data dir)",
                file.display()
            ),
        }
        .into());
    }
    let checkpoint = match (&args.checkpoint, args.ask_server) {
        (Some(text), _) => Some(parse_head(text)?),
        (None, true) => {
            let client = args.conn.client("admin-admin").await?;
            let resp = client
                .list_audit(ListAuditRequest {
                    limit: 1,
                    ..ListAuditRequest::default()
                })
                .await
                .map_err(|s| status_error(&s))?;
            (resp.checkpoint_seq > 0).then_some(Head {
                seq: resp.checkpoint_seq,
                hash: resp.checkpoint_hash,
            })
        }
        (None, false) => None,
    };
    // The current log carries its rotated files along; a rotated file is checked on its own.
    let files = if file.extension().is_some_and(|e| e == "log") {
        chain::log_files(&file)
    } else {
        vec![file.clone()]
    };
    let outcome = tokio::task::spawn_blocking({
        let checkpoint = checkpoint.clone();
        move || chain::verify(&files, checkpoint.as_ref())
    })
    .await?;
    match outcome {
        Ok(v) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "records": v.records, "first_seq": v.first_seq,
                        "head": {"seq": v.head.seq, "hash": v.head.hash},
                    })
                );
            } else {
                println!(
                    "ok: {} records intact (seq {} to {}), head {}",
                    v.records, v.first_seq, v.head.seq, v.head.hash
                );
                match &checkpoint {
                    Some(c) => println!("the chain holds the checkpointed head (seq {})", c.seq),
                    None => println!(
                        "no checkpoint checked: a cut tail goes unseen (pass --ask-server)"
                    ),
                }
            }
            Ok(exit::OK)
        }
        Err(broken) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false, "error": broken.why, "file": broken.file, "line": broken.line,
                    })
                );
            } else {
                eprintln!("the audit chain is broken: {broken}");
            }
            Ok(exit::FAILED)
        }
    }
}

fn parse_head(text: &str) -> anyhow::Result<Head> {
    let bad = || exit::usage(format!("--checkpoint {text:?} is not SEQ:HASH"));
    let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(Head {
        seq,
        hash: hash.to_ascii_lowercase(),
    })
}
