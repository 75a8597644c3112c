//! `croupier stats [FUNCTION]`: per-function call statistics of the server asked (each replica
//! counts the calls it routed).

use clap::Args;
use croupier_proto::function::v1::{FunctionStats, StatsWindow};

use crate::cli::{ListArgs, status_error};
use crate::output::{clean, table, time};

/// `croupier stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Only this function (every function when omitted).
    pub function: Option<String>,
    /// Game, environment, JSON output (`{"server_id", "stats": [...]}`) and connection.
    #[command(flatten)]
    pub list: ListArgs,
}

fn window_json(w: Option<&StatsWindow>) -> serde_json::Value {
    let w = w.copied().unwrap_or_default();
    serde_json::json!({
        "calls": w.calls, "errors": w.errors, "success_rate": w.success_rate,
        "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "rate_per_sec": w.rate_per_sec,
    })
}

pub(super) fn to_json(s: &FunctionStats) -> serde_json::Value {
    let agents: Vec<_> = s
        .agents
        .iter()
        .map(|a| {
            serde_json::json!({
                "agent_id": a.agent_id, "calls": a.calls, "errors": a.errors,
                "last_error": a.last_error,
            })
        })
        .collect();
    serde_json::json!({
        "game_id": s.game_id, "env": s.env, "function_id": s.function_id,
        "total": window_json(s.total.as_ref()),
        "last_minute": window_json(s.last_minute.as_ref()),
        "last_error": s.last_error, "last_error_at": s.last_error_at, "agents": agents,
    })
}

/// Runs `croupier stats`.
pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let StatsArgs {
        function,
        list: args,
    } = args;
    let client = args.conn.client("client-dev").await?;
    let resp = client
        .function_stats(&args.game_id, &args.env, function.as_deref().unwrap_or(""))
        .await
        .map_err(|s| status_error(&s))?;
    if args.json {
        let stats: Vec<_> = resp.stats.iter().map(to_json).collect();
        println!(
            "{}",
            serde_json::json!({ "server_id": resp.server_id, "stats": stats })
        );
        return Ok(());
    }
    eprintln!(
        "# server {}'s view (each replica counts the calls it routed; ask the others with --server)",
        clean(&resp.server_id)
    );
    let fmt = |w: Option<&StatsWindow>| {
        let w = w.copied().unwrap_or_default();
        (
            w.calls.to_string(),
            w.errors.to_string(),
            format!("{:.1}%", w.success_rate * 100.0),
            format!("{:.2}/{:.2}", w.p50_ms, w.p99_ms),
            format!("{:.2}", w.rate_per_sec),
        )
    };
    let rows: Vec<Vec<String>> = resp
        .stats
        .iter()
        .map(|s| {
            let (calls, errors, ok, lat, _) = fmt(s.total.as_ref());
            let (m_calls, _, m_ok, m_lat, m_rate) = fmt(s.last_minute.as_ref());
            vec![
                clean(&s.function_id),
                format!("{}/{}", clean(&s.game_id), clean(&s.env)),
                calls,
                errors,
                ok,
                lat,
                m_calls,
                m_ok,
                m_lat,
                m_rate,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "FUNCTION",
                "SCOPE",
                "CALLS",
                "ERRORS",
                "OK",
                "P50/P99 MS",
                "1M CALLS",
                "1M OK",
                "1M P50/P99",
                "1M RATE/S",
            ],
            &rows
        )
    );
    // One function asked for: its agents and last error too.
    if let [s] = resp.stats.as_slice()
        && function.is_some()
    {
        if !s.last_error.is_empty() {
            println!(
                "\nlast error {}: {}",
                time(s.last_error_at),
                clean(&s.last_error)
            );
        }
        let rows: Vec<Vec<String>> = s
            .agents
            .iter()
            .map(|a| {
                vec![
                    clean(&a.agent_id),
                    a.calls.to_string(),
                    a.errors.to_string(),
                    clean(&a.last_error),
                ]
            })
            .collect();
        if !rows.is_empty() {
            println!();
            print!(
                "{}",
                table(&["AGENT", "CALLS", "ERRORS", "LAST ERROR"], &rows)
            );
        }
    }
    Ok(())
}
