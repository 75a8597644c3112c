//! `croupier node state`: a node's administrative state; `croupier node resources` and
//! `croupier node metrics`: its inventory and metric history (in `fleet`).

use super::*;
use clap::Subcommand;
use croupier_proto::common::v1::NodeState;

/// `croupier node …`.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Set a node's state: normal, maintenance or disabled (admin certificate).
    State {
        /// Agent id.
        agent: String,
        /// normal, maintenance or disabled.
        state: String,
        /// Why (recorded with who did it).
        #[arg(long, default_value = "")]
        reason: String,
        /// JSON output: the state record.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a node's metric history: last, min, average, max and a sparkline per metric.
    Metrics {
        /// Agent id.
        agent: String,
        /// How far back (e.g. 30m, 6h, 1d).
        #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
        since: std::time::Duration,
        /// Only these metrics: names or prefixes (`cpu`, `disk.`, `net.eth0.`), repeatable.
        #[arg(long = "metric")]
        metrics: Vec<String>,
        /// JSON output: {"agent_id", "raw_since", "step_ms", "series": [{"name", "points":
        /// [{"timestamp", "value", "min", "max"}]}]}.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a node's inventory (hardware, system, runtimes), its history, or what changed.
    Resources {
        /// Agent id.
        agent: String,
        /// List every stored version instead of showing the latest.
        #[arg(long)]
        history: bool,
        /// Show what changed from version V1 to version V2.
        #[arg(long, num_args = 2, value_names = ["V1", "V2"])]
        diff: Option<Vec<i64>>,
        /// JSON output: {"agent_id", "versions": [{"version", "recorded_at", "inventory"}],
        /// "changes": [{"path", "before", "after"}]}.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs a `croupier node` command.
pub async fn run(cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::State {
            agent,
            state,
            reason,
            json,
            conn,
        } => node_state(&agent, &state, &reason, json, &conn).await,
        NodeCommand::Metrics {
            agent,
            since,
            metrics,
            json,
            conn,
        } => super::fleet::metrics(&agent, since, &metrics, json, &conn).await,
        NodeCommand::Resources {
            agent,
            history,
            diff,
            json,
            conn,
        } => {
            let diff = diff.map(|v| (v[0], v[1]));
            super::fleet::resources(&agent, history, diff, json, &conn).await
        }
    }
}

/// Runs `croupier node state`.
pub async fn node_state(
    agent: &str,
    state: &str,
    reason: &str,
    json: bool,
    conn: &Conn,
) -> anyhow::Result<()> {
    let state = match state {
        "normal" => NodeState::Normal,
        "maintenance" => NodeState::Maintenance,
        "disabled" => NodeState::Disabled,
        other => {
            return Err(super::exit::usage(format!(
                "state {other:?} is not normal, maintenance or disabled"
            )));
        }
    };
    let client = conn.client("admin-admin").await?;
    let resp = client
        .set_node_state(agent, state, reason)
        .await
        .map_err(|s| status_error(&s))?;
    let rec = resp.record.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "agent_id": rec.agent_id, "state": node_state_name(rec.state),
                "actor": rec.actor, "reason": rec.reason, "changed_at": rec.changed_at,
                "applied_at": rec.applied_at, "delivery": resp.delivery,
            })
        );
        return Ok(());
    }
    println!(
        "{} is now {} (by {}: {:?})",
        rec.agent_id,
        node_state_name(rec.state),
        rec.actor,
        rec.reason
    );
    if rec.applied_at > 0 {
        println!(
            "applied by the agent at {}",
            crate::output::time(rec.applied_at)
        );
    } else {
        println!("{}", resp.delivery);
    }
    Ok(())
}
