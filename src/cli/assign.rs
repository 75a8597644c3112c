//! `croupier assign set|list|delete`: function assignments (enable, disable, configure a
//! function per agent or label selector).

use super::*;
use crate::output::{clean, table, time};
use clap::Subcommand;
use croupier_proto::control::v1::{Assignment, ListAssignmentsRequest};

/// `croupier assign …`.
#[derive(Subcommand, Debug)]
pub enum AssignCommand {
    /// Store an assignment (a new id, or replace the one with that id); admin certificate, or
    /// a policy grant of `assign`.
    Set {
        /// Assignment id ([A-Za-z0-9._-]).
        id: String,
        /// The function.
        #[arg(long)]
        function: String,
        /// Game.
        #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
        game_id: String,
        /// Environment.
        #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
        env: String,
        /// One agent…
        #[arg(long, conflicts_with = "selector")]
        agent: Option<String>,
        /// …or the agents whose labels match (repeatable): --selector region=eu.
        #[arg(long = "selector", value_parser = parse_pair)]
        selector: Vec<(String, String)>,
        /// Make the function unavailable on the matching agents (default: enabled).
        #[arg(long)]
        disable: bool,
        /// Configuration the handler receives with every call (repeatable): --config level=3.
        #[arg(long = "config", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        /// Why (recorded with who did it).
        #[arg(long, default_value = "")]
        reason: String,
        /// JSON output: the assignment as stored.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// List assignments.
    List {
        /// Only this function's.
        #[arg(long)]
        function: Option<String>,
        /// Only those that apply to this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Game.
        #[arg(long, default_value = "")]
        game_id: String,
        /// Environment.
        #[arg(long, default_value = "")]
        env: String,
        /// JSON output: {"assignments": [...]}.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an assignment (the function goes back to what the others say, or enabled).
    Delete {
        /// Assignment id.
        id: String,
        /// JSON output: {"id", "deleted"}.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs a `croupier assign` command.
pub async fn run(cmd: AssignCommand) -> anyhow::Result<()> {
    match cmd {
        AssignCommand::Set {
            id,
            function,
            game_id,
            env,
            agent,
            selector,
            disable,
            config,
            reason,
            json,
            conn,
        } => {
            if agent.is_none() && selector.is_empty() {
                return Err(super::exit::usage(
                    "give --agent ID or at least one --selector KEY=VALUE",
                ));
            }
            let client = conn.client("admin-admin").await?;
            let stored = client
                .put_assignment(Assignment {
                    id,
                    game_id,
                    env,
                    function_id: function,
                    agent_id: agent.unwrap_or_default(),
                    selector: selector.into_iter().collect(),
                    enabled: !disable,
                    config: config.into_iter().collect(),
                    reason,
                    ..Default::default()
                })
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                println!("{}", assignment_json(&stored));
            } else {
                println!(
                    "assignment {}: {} {} on {} (revision {})",
                    stored.id,
                    stored.function_id,
                    if stored.enabled {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    target(&stored),
                    stored.revision
                );
            }
            Ok(())
        }
        AssignCommand::List {
            function,
            agent,
            game_id,
            env,
            json,
            conn,
        } => {
            let client = conn.client("client-dev").await?;
            let all = client
                .list_assignments(ListAssignmentsRequest {
                    game_id,
                    env,
                    function_id: function.unwrap_or_default(),
                    agent_id: agent.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                let list: Vec<serde_json::Value> = all.iter().map(assignment_json).collect();
                println!("{}", serde_json::json!({ "assignments": list }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|a| {
                    let mut config: Vec<String> =
                        a.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    config.sort();
                    vec![
                        clean(&a.id),
                        clean(&a.function_id),
                        format!("{}/{}", clean(&a.game_id), clean(&a.env)),
                        clean(&target(a)),
                        if a.enabled { "enabled" } else { "disabled" }.into(),
                        clean(&config.join(",")),
                        format!("{} by {}", time(a.updated_at), clean(&a.actor)),
                        clean(&a.reason),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID", "FUNCTION", "GAME/ENV", "ON", "STATE", "CONFIG", "SET", "REASON"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        AssignCommand::Delete { id, json, conn } => {
            let client = conn.client("admin-admin").await?;
            let deleted = client
                .delete_assignment(&id)
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                println!("{}", serde_json::json!({"id": id, "deleted": deleted}));
            } else if deleted {
                println!("assignment {id} deleted");
            } else {
                println!("no assignment {id}");
            }
            Ok(())
        }
    }
}

/// "agent a1" or "agents with region=eu,tier=2".
fn target(a: &Assignment) -> String {
    if !a.agent_id.is_empty() {
        return format!("agent {}", a.agent_id);
    }
    let mut pairs: Vec<String> = a.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    format!("agents with {}", pairs.join(","))
}

fn assignment_json(a: &Assignment) -> serde_json::Value {
    serde_json::json!({
        "id": a.id, "game_id": a.game_id, "env": a.env, "function_id": a.function_id,
        "agent_id": a.agent_id, "selector": a.selector, "enabled": a.enabled,
        "config": a.config, "reason": a.reason, "actor": a.actor,
        "updated_at": a.updated_at, "revision": a.revision,
    })
}
