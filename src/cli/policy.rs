//! `croupier policy get|put|test`: the admin policy in the store. A policy file is TOML or JSON
//! (by extension; anything but `.json` is read as TOML):
//!
//! ```toml
//! [roles]
//! support = ["client/alice", "client/bob"]
//! leads = ["admin/carol"]
//!
//! [[rule]]
//! name = "support bans players in live, with a lead's approval"
//! who = ["support"]
//! actions = ["invoke", "job"]
//! functions = ["player.*"]
//! scopes = ["mygame/live"]
//! approval = { approvers = "leads", count = 1, ttl = "1h" }
//!
//! [[rule]]
//! name = "admins do everything"
//! who = ["admin"]
//! actions = ["*"]
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use croupier_proto::control::v1::TestPolicyRequest;

use crate::cli::{Conn, exit, status_error};

/// `croupier policy …`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy in force (the stored one, or the built-in one) as pretty JSON
    /// (admin certificate).
    Get {
        /// JSON output: `{"policy", "stored", "revision"}`.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Validate and store a policy from a TOML or JSON file (admin certificate).
    Put {
        /// The policy file.
        file: PathBuf,
        /// Store only if the stored policy still has this revision (from `policy get --json`).
        #[arg(long)]
        expect_revision: Option<i64>,
        /// JSON output: `{"revision"}`.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Explain what the policy decides for an identity, an action, a function and a scope.
    /// Exits 0 when allowed and 1 when denied.
    Test(TestArgs),
}

/// `croupier policy test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// The identity: `client/alice` or `spiffe://croupier/client/alice` (default: the caller;
    /// another identity needs an admin certificate).
    #[arg(long, default_value = "")]
    pub identity: String,
    /// invoke, job, read, cancel, node_state, pipelines or approve.
    #[arg(long)]
    pub action: String,
    /// The function.
    #[arg(long, default_value = "")]
    pub function: String,
    /// Game.
    #[arg(long, default_value = "")]
    pub game: String,
    /// Environment.
    #[arg(long, default_value = "")]
    pub env: String,
    /// Test this draft policy file (TOML or JSON) instead of the one in force.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// JSON output: the decision.
    #[arg(long)]
    pub json: bool,
    /// Server URL.
    #[arg(
        long,
        env = "CROUPIER_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Directory with ca.pem and the certificate to connect with (default: the dev ones).
    #[arg(long, env = "CROUPIER_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Certificate file stem to connect with (default: the admin certificate); `--identity`
    /// names the identity tested.
    #[arg(long, env = "CROUPIER_IDENTITY")]
    pub cert: Option<String>,
}

/// Runs a `croupier policy` command; returns the exit code.
pub async fn run(cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Get { json, conn } => {
            let client = conn.client("admin-admin").await?;
            let p = client.policy().await.map_err(|s| status_error(&s))?;
            if json {
                let policy: serde_json::Value =
                    serde_json::from_str(&p.policy_json).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "policy": policy, "stored": p.stored, "revision": p.revision,
                    })
                );
            } else {
                if !p.stored {
                    eprintln!("# no policy is stored: this is the built-in one");
                }
                println!("{}", p.policy_json);
            }
        }
        PolicyCommand::Put {
            file,
            expect_revision,
            json,
            conn,
        } => {
            let policy = read_policy(&file)?;
            let client = conn.client("admin-admin").await?;
            let revision = client
                .put_policy(&policy, expect_revision.unwrap_or(0))
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                println!("{}", serde_json::json!({ "revision": revision }));
            } else {
                println!("policy stored at revision {revision}");
            }
        }
        PolicyCommand::Test(args) => return test(args).await,
    }
    Ok(exit::OK)
}

async fn test(args: TestArgs) -> anyhow::Result<i32> {
    let policy_json = match &args.file {
        Some(f) => read_policy(f)?,
        None => String::new(),
    };
    let conn = Conn {
        server: args.server.clone(),
        tls_dir: args.tls_dir.clone(),
        identity: args.cert.clone(),
        gzip: false,
    };
    let client = conn.client("admin-admin").await?;
    let d = client
        .test_policy(TestPolicyRequest {
            identity: args.identity.clone(),
            action: args.action.clone(),
            function_id: args.function.clone(),
            game_id: args.game.clone(),
            env: args.env.clone(),
            policy_json,
        })
        .await
        .map_err(|s| status_error(&s))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "allowed": d.allowed, "rule": d.rule, "explanation": d.explanation,
                "roles": d.roles, "approvers": d.approvers, "approval_count": d.approval_count,
            })
        );
    } else {
        // The explanation starts with the verdict ("allowed …" / "denied …").
        println!("{}", crate::output::clean(&d.explanation));
        if !d.rule.is_empty() {
            println!("rule:  {}", crate::output::clean(&d.rule));
        }
        if !d.roles.is_empty() {
            println!("roles: {}", d.roles.join(", "));
        }
        if d.allowed && !d.approvers.is_empty() {
            println!(
                "needs approval by {} of role {} before it runs",
                d.approval_count, d.approvers
            );
        }
    }
    Ok(if d.allowed { exit::OK } else { exit::FAILED })
}

/// Reads a policy file (JSON, or TOML for any other extension) as JSON text; the server
/// validates it.
fn read_policy(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(text);
    }
    let value: serde_json::Value = toml::from_str(&text)
        .map_err(|e| exit::usage(format!("{} is not valid TOML: {e}", path.display())))?;
    Ok(value.to_string())
}
