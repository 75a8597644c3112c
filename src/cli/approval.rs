//! `croupier approval list|show|approve|reject`: two-person approvals. A call the policy marks
//! for approval is refused with `FAILED_PRECONDITION` (reason `APPROVAL_REQUIRED`, the approval
//! id in the error details) and waits here until an approver who is not the requester decides.

use clap::Subcommand;
use croupier_proto::function::v1::Approval;
use croupier_proto::json::opt_struct_to_json;

use crate::cli::{Conn, status_error};
use crate::output::{clean, table, time};

/// `croupier approval …`.
#[derive(Subcommand, Debug)]
pub enum ApprovalCommand {
    /// List the approval requests you may see (your own, those you may approve; admins: all).
    List {
        /// Only this state: pending, approved, rejected, expired.
        #[arg(long, default_value = "")]
        state: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i32,
        /// JSON output: `{"approvals": [...]}`.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one request: payload (sensitive fields masked), decisions, outcome.
    Show {
        /// The approval id.
        id: String,
        /// JSON output: the approval.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a pending request; the approval that completes the count runs the call, once.
    Approve(Decide),
    /// Reject a pending request; the call never runs.
    Reject(Decide),
}

/// The arguments of `approve` and `reject`.
#[derive(clap::Args, Debug)]
pub struct Decide {
    /// The approval id.
    pub id: String,
    /// Why (recorded in the approval and the audit log).
    #[arg(long)]
    pub reason: String,
    /// JSON output: the approval after the decision.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs a `croupier approval` command.
pub async fn run(cmd: ApprovalCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalCommand::List {
            state,
            limit,
            json,
            conn,
        } => {
            let client = conn.client("client-dev").await?;
            let list = client
                .approvals(&state, limit)
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                let all: Vec<_> = list.iter().map(to_json).collect();
                println!("{}", serde_json::json!({ "approvals": all }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.state.clone(),
                        clean(&a.function_id),
                        format!("{}/{}", clean(&a.game_id), clean(&a.env)),
                        clean(&a.requester),
                        format!("{}/{}", approvals_given(a), a.count),
                        time(a.expires_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "STATE",
                        "FUNCTION",
                        "SCOPE",
                        "REQUESTER",
                        "APPROVED",
                        "EXPIRES"
                    ],
                    &rows
                )
            );
        }
        ApprovalCommand::Show { id, json, conn } => {
            let client = conn.client("client-dev").await?;
            let a = client.approval(&id).await.map_err(|s| status_error(&s))?;
            show(&a, json);
        }
        ApprovalCommand::Approve(d) => decide(d, true).await?,
        ApprovalCommand::Reject(d) => decide(d, false).await?,
    }
    Ok(())
}

async fn decide(d: Decide, approve: bool) -> anyhow::Result<()> {
    let client = d.conn.client("client-dev").await?;
    let a = client
        .decide_approval(&d.id, approve, &d.reason)
        .await
        .map_err(|s| status_error(&s))?;
    show(&a, d.json);
    Ok(())
}

fn approvals_given(a: &Approval) -> usize {
    a.decisions.iter().filter(|d| d.approve).count()
}

fn to_json(a: &Approval) -> serde_json::Value {
    let decisions: Vec<_> = a
        .decisions
        .iter()
        .map(|d| serde_json::json!({"who": d.who, "approve": d.approve, "reason": d.reason, "at": d.at}))
        .collect();
    serde_json::json!({
        "id": a.id, "state": a.state, "kind": a.kind, "requester": a.requester,
        "function_id": a.function_id, "game_id": a.game_id, "env": a.env,
        "payload": opt_struct_to_json(a.payload.as_ref()),
        "approvers": a.approvers, "count": a.count, "decisions": decisions,
        "created_at": a.created_at, "expires_at": a.expires_at, "job_id": a.job_id,
        "result": opt_struct_to_json(a.result.as_ref()),
        "error_code": a.error_code, "error": a.error, "rule": a.rule,
    })
}

fn show(a: &Approval, json: bool) {
    if json {
        println!("{}", to_json(a));
        return;
    }
    println!("approval   {} ({})", a.id, a.state);
    println!(
        "call       {} {} in {}/{}",
        a.kind,
        clean(&a.function_id),
        clean(&a.game_id),
        clean(&a.env)
    );
    println!("requester  {}", clean(&a.requester));
    println!(
        "approvers  {} of role {} ({} so far)",
        a.count,
        clean(&a.approvers),
        approvals_given(a)
    );
    if !a.rule.is_empty() {
        println!("rule       {}", clean(&a.rule));
    }
    println!(
        "created    {}, expires {}",
        time(a.created_at),
        time(a.expires_at)
    );
    println!("payload    {}", opt_struct_to_json(a.payload.as_ref()));
    for d in &a.decisions {
        let verb = if d.approve { "approved" } else { "rejected" };
        println!(
            "decision   {verb} by {} at {}: {}",
            clean(&d.who),
            time(d.at),
            clean(&d.reason)
        );
    }
    if !a.job_id.is_empty() {
        println!("job        {} (croupier job watch {})", a.job_id, a.job_id);
    }
    if a.result.is_some() {
        println!("result     {}", opt_struct_to_json(a.result.as_ref()));
    }
    if !a.error_code.is_empty() {
        println!("outcome    {}: {}", a.error_code, clean(&a.error));
    }
}
