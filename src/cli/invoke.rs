//! `croupier invoke`: one call, its result or error.

use super::*;
use crate::output::table;
use clap::Args;
use croupier_proto::json::{opt_struct_to_json, struct_to_json};

/// `croupier invoke`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// Function id, e.g. agent.ping.
    pub function: String,
    /// Payload, routing, deadline, idempotency.
    #[command(flatten)]
    pub call: CallArgs,
    /// Print the whole response as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `croupier invoke`; returns the process exit code ([`super::exit`]): 0 on success, 1
/// when the handler failed, 4 when the server refused the call, 5 when it was not reached.
pub async fn invoke(args: InvokeArgs) -> anyhow::Result<i32> {
    let payload = args.call.payload()?;
    let client = args.conn.client("client-dev").await?;
    let opts = args.call.options();
    let resp = match client.invoke(&args.function, payload, &opts).await {
        Ok(r) => r,
        Err(s) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"grpc_code": format!("{:?}", s.code()), "message": s.message()})
                );
            } else {
                eprintln!("error: {}", status_error(&s));
            }
            return Ok(super::exit::of_status(&s));
        }
    };
    let results: Vec<serde_json::Value> = resp
        .results
        .iter()
        .map(|r| {
            serde_json::json!({
                "agent_id": r.agent_id,
                "success": r.success,
                "result": opt_struct_to_json(r.result.as_ref()),
                "error": r.error,
                "error_code": r.error_code,
            })
        })
        .collect();
    if args.json {
        let out = serde_json::json!({
            "success": resp.success,
            "agent_id": resp.agent_id,
            "request_id": resp.request_id,
            "result": resp.result.as_ref().map(struct_to_json),
            "error": resp.error,
            "error_code": resp.error_code,
            "results": results,
        });
        println!("{out}");
    } else if !resp.results.is_empty() {
        let rows: Vec<Vec<String>> = resp
            .results
            .iter()
            .map(|r| {
                let out = if r.success {
                    opt_struct_to_json(r.result.as_ref()).to_string()
                } else {
                    format!("{}: {}", r.error_code, r.error)
                };
                vec![
                    r.agent_id.clone(),
                    if r.success { "ok" } else { "failed" }.into(),
                    out,
                ]
            })
            .collect();
        print!("{}", table(&["AGENT", "STATUS", "RESULT"], &rows));
    } else if resp.success {
        println!(
            "{}",
            serde_json::to_string_pretty(&opt_struct_to_json(resp.result.as_ref()))?
        );
        eprintln!("(served by {})", resp.agent_id);
    } else {
        eprintln!(
            "{} failed on {}: {}: {}",
            args.function, resp.agent_id, resp.error_code, resp.error
        );
    }
    Ok(if resp.success { 0 } else { 1 })
}
