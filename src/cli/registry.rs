//! `croupier agents`, `functions` and `watch`: what the registry holds and how it changes.

use super::*;
use std::collections::HashMap;

use crate::output::{age, clean, table};
use clap::Args;
use croupier_proto::common::v1::NodeState;
use croupier_proto::function::v1::FunctionStats;
use croupier_proto::json::struct_to_json;
use croupier_proto::registry::v1::FunctionRegistration;
use croupier_proto::registry::v1::{EventType, WatchRegistrationsRequest};

/// `croupier agents` / `croupier functions`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this game.
    #[arg(long, default_value = "")]
    pub game_id: String,
    /// Only this environment.
    #[arg(long, default_value = "")]
    pub env: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier functions`.
#[derive(Args, Debug)]
pub struct FunctionsArgs {
    /// What to list and how.
    #[command(flatten)]
    pub list: ListArgs,
    /// Add each function's call statistics as this server counted them (calls, errors,
    /// latency, last minute's rate; `croupier stats` has more).
    #[arg(long)]
    pub stats: bool,
}

/// `croupier watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Only this function.
    #[arg(long, default_value = "")]
    pub function: String,
    /// Only this game.
    #[arg(long, default_value = "")]
    pub game_id: String,
    /// Only this environment.
    #[arg(long, default_value = "")]
    pub env: String,
    /// Resume from this revision instead of starting with the current state.
    #[arg(long, default_value_t = 0)]
    pub from_revision: i64,
    /// JSON lines output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `croupier agents`.
pub async fn agents(args: ListArgs) -> anyhow::Result<()> {
    let client = args.conn.client("client-dev").await?;
    let agents = client
        .agents(&args.game_id, &args.env)
        .await
        .map_err(|s| status_error(&s))?;
    if args.json {
        let list: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                let node = a.node_state.clone().unwrap_or_default();
                serde_json::json!({
                    "agent_id": a.agent_id, "game_id": a.game_id, "env": a.env,
                    "version": a.version, "functions": a.functions, "labels": a.labels,
                    "node_state": node_state_name(node.state), "node_reason": node.reason,
                    "node_actor": node.actor, "node_changed_at": node.changed_at,
                    "node_applied_at": node.applied_at, "online": a.online,
                    "last_heartbeat": a.last_heartbeat, "owner": a.owner, "addr": a.addr,
                    "in_flight": a.in_flight, "status": a.status,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "agents": list }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let mut labels: Vec<String> =
                a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                a.agent_id.clone(),
                format!("{}/{}", a.game_id, a.env),
                state_cell(a.node_state.as_ref()),
                if a.online { "online" } else { "offline" }.into(),
                if a.owner.is_empty() {
                    "-".into()
                } else {
                    a.owner.clone()
                },
                age(a.last_heartbeat),
                a.functions.len().to_string(),
                a.in_flight.to_string(),
                summary(&a.status, "running_jobs", ""),
                summary(&a.status, "cpu_percent", "%"),
                summary(&a.status, "memory_percent", "%"),
                labels.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "AGENT",
                "GAME/ENV",
                "STATE",
                "TUNNEL",
                "SERVER",
                "HEARTBEAT",
                "FUNCTIONS",
                "IN-FLIGHT",
                "JOBS",
                "CPU",
                "MEM",
                "LABELS"
            ],
            &rows
        )
    );
    Ok(())
}

/// The STATE column: the state, and "(pending)" while the agent has not applied a change.
fn state_cell(node: Option<&croupier_proto::common::v1::NodeStateRecord>) -> String {
    let node = node.cloned().unwrap_or_default();
    let name = node_state_name(node.state);
    if node.changed_at > 0 && node.applied_at < node.changed_at {
        format!("{name} (pending)")
    } else {
        name.to_string()
    }
}

pub(super) fn node_state_name(s: i32) -> &'static str {
    match NodeState::try_from(s).unwrap_or_default() {
        NodeState::Normal => "normal",
        NodeState::Maintenance => "maintenance",
        NodeState::Disabled => "disabled",
    }
}

/// Runs `croupier functions`.
pub async fn functions(args: FunctionsArgs) -> anyhow::Result<()> {
    let FunctionsArgs { list: args, stats } = args;
    let client = args.conn.client("client-dev").await?;
    let regs = client
        .registrations(&args.game_id, &args.env, "")
        .await
        .map_err(|s| status_error(&s))?;
    let stats = if stats {
        let resp = client
            .function_stats(&args.game_id, &args.env, "")
            .await
            .map_err(|s| status_error(&s))?;
        let by_key: HashMap<(String, String, String), FunctionStats> = resp
            .stats
            .into_iter()
            .map(|s| ((s.game_id.clone(), s.env.clone(), s.function_id.clone()), s))
            .collect();
        Some((resp.server_id, by_key))
    } else {
        None
    };
    let stats_of = |r: &FunctionRegistration| {
        let (_, by_key) = stats.as_ref()?;
        let key = (r.game_id.clone(), r.env.clone(), r.function_id.clone());
        Some(by_key.get(&key).cloned().unwrap_or_else(|| FunctionStats {
            game_id: r.game_id.clone(),
            env: r.env.clone(),
            function_id: r.function_id.clone(),
            ..Default::default()
        }))
    };
    if args.json {
        let list: Vec<serde_json::Value> = regs
            .registrations
            .iter()
            .map(|r| {
                let mut v = registration_json(r);
                if let Some(s) = stats_of(r) {
                    v["stats"] = super::stats::to_json(&s);
                }
                v
            })
            .collect();
        let mut out = serde_json::json!({"revision": regs.revision, "registrations": list});
        if let Some((server_id, _)) = &stats {
            out["stats_server_id"] = server_id.clone().into();
        }
        println!("{out}");
        return Ok(());
    }
    if let Some((server_id, _)) = &stats {
        eprintln!(
            "# statistics are server {}'s view (each replica counts the calls it routed)",
            clean(server_id)
        );
    }
    let rows: Vec<Vec<String>> = regs
        .registrations
        .iter()
        .map(|r| {
            let d = r.function_descriptor.clone().unwrap_or_default();
            let semantics = d.semantics.clone().unwrap_or_default();
            let mut kind = if semantics.kind.is_empty() {
                "command".to_string()
            } else {
                semantics.kind.clone()
            };
            if semantics.job {
                kind.push_str(", job");
            }
            let agents: Vec<String> = r.agents.iter().map(|a| a.agent_id.clone()).collect();
            let mut row = vec![
                r.function_id.clone(),
                format!("{}/{}", r.game_id, r.env),
                kind,
                if agents.is_empty() {
                    "-".into()
                } else {
                    agents.join(",")
                },
            ];
            if let Some(s) = stats_of(r) {
                let total = s.total.unwrap_or_default();
                let minute = s.last_minute.unwrap_or_default();
                row.extend([
                    total.calls.to_string(),
                    total.errors.to_string(),
                    format!("{:.2}/{:.2}", total.p50_ms, total.p99_ms),
                    format!("{:.2}", minute.rate_per_sec),
                ]);
            }
            row.push(d.description);
            row
        })
        .collect();
    let mut headers = vec!["FUNCTION", "GAME/ENV", "KIND", "AGENTS"];
    if stats.is_some() {
        headers.extend(["CALLS", "ERRORS", "P50/P99 MS", "1M RATE/S"]);
    }
    headers.push("DESCRIPTION");
    print!("{}", table(&headers, &rows));
    Ok(())
}

pub(super) fn registration_json(
    r: &croupier_proto::registry::v1::FunctionRegistration,
) -> serde_json::Value {
    let d = r.function_descriptor.clone().unwrap_or_default();
    serde_json::json!({
        "function_id": r.function_id,
        "game_id": r.game_id,
        "env": r.env,
        "description": d.description,
        "params_schema": d.params_schema.as_ref().map(struct_to_json),
        "agents": r.agents.iter().map(|a| serde_json::json!({
            "agent_id": a.agent_id, "online": a.online, "labels": a.labels,
            "node_state": node_state_name(a.node_state), "version": a.version,
        })).collect::<Vec<_>>(),
    })
}

/// Runs `croupier watch` until interrupted or the server ends the stream.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = args.conn.client("client-dev").await?;
    let mut stream = client
        .watch(WatchRegistrationsRequest {
            game_id: args.game_id.clone(),
            env: args.env.clone(),
            function_id: args.function.clone(),
            start_revision: args.from_revision,
        })
        .await
        .map_err(|s| status_error(&s))?;
    loop {
        let ev = match stream.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_error(&s)),
        };
        let kind = EventType::try_from(ev.r#type)
            .unwrap_or(EventType::Updated)
            .as_str_name();
        if args.json {
            let mut out =
                serde_json::json!({"type": kind, "revision": ev.revision, "agent_id": ev.agent_id});
            if let Some(r) = &ev.registration {
                out["registration"] = registration_json(r);
            }
            println!("{out}");
        } else if let Some(r) = &ev.registration {
            println!("{}", watch_line(&ev, kind, r));
        } else {
            println!("{:>6} {kind}", ev.revision);
        }
    }
}

/// One human line of `watch`: the initial state lists the function's agents; a change names the
/// agent that came, changed or went (the other agents are unaffected), or says the descriptor
/// changed.
fn watch_line(
    ev: &croupier_proto::registry::v1::RegistrationEvent,
    kind: &str,
    r: &croupier_proto::registry::v1::FunctionRegistration,
) -> String {
    use crate::output::clean;
    let what = if !ev.agent_id.is_empty() {
        format!("agent={}", clean(&ev.agent_id))
    } else if r.agents.is_empty() && kind != "ADDED" {
        "descriptor".to_string()
    } else {
        let agents: Vec<&str> = r.agents.iter().map(|a| a.agent_id.as_str()).collect();
        format!("agents=[{}]", clean(&agents.join(",")))
    };
    format!(
        "{:>6} {:<8} {:<24} {}/{} {what}",
        ev.revision,
        kind,
        clean(&r.function_id),
        clean(&r.game_id),
        clean(&r.env),
    )
}

/// One figure of an agent's heartbeat summary for the table, `-` when it sent none.
pub(super) fn summary(
    status: &std::collections::HashMap<String, String>,
    key: &str,
    unit: &str,
) -> String {
    status
        .get(key)
        .map_or_else(|| "-".to_string(), |v| format!("{v}{unit}"))
}
