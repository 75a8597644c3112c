//! `croupier describe FUNCTION`: one function's descriptor, schemas and agents, readable.

use super::*;
use croupier_proto::json::opt_struct_to_json;

/// `croupier describe`.
#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// The function id.
    pub function: String,
    /// Game.
    #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
    pub game_id: String,
    /// Environment.
    #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
    pub env: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `croupier describe`; exit 4 when the function is not registered.
pub async fn describe(a: DescribeArgs) -> anyhow::Result<i32> {
    let client = a.conn.client("client-dev").await?;
    let functions = client
        .functions(&a.game_id, &a.env)
        .await
        .map_err(|s| status_error(&s))?;
    let Some(f) = functions.iter().find(|f| f.id == a.function) else {
        let names: Vec<&str> = functions.iter().map(|f| f.id.as_str()).collect();
        eprintln!(
            "error: function {} is not registered in game {:?} env {:?}; registered: {}",
            crate::output::clean(&a.function),
            a.game_id,
            a.env,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Ok(exit::REFUSED);
    };
    let d = &f.descriptor;
    let sem = d.semantics.clone().unwrap_or_default();
    let auth = d.auth.clone().unwrap_or_default();
    let agents: Vec<serde_json::Value> = f
        .agents
        .iter()
        .map(|ag| {
            serde_json::json!({
                "agent_id": ag.agent_id,
                "online": ag.online,
                "version": ag.version,
                "labels": ag.labels,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "id": f.id,
        "game_id": f.game_id,
        "env": f.env,
        "name": d.name,
        "description": d.description,
        "version": d.version,
        "category": d.category,
        "kind": if sem.kind.is_empty() { "command" } else { sem.kind.as_str() },
        "idempotent": sem.idempotent,
        "job": sem.job,
        "timeout_s": sem.timeout,
        "allowed_roles": auth.allowed_roles,
        "allowed_identities": auth.allowed_identities,
        "sensitive_fields": auth.sensitive_fields,
        "params_schema": opt_struct_to_json(d.params_schema.as_ref()),
        "result_schema": opt_struct_to_json(d.result_schema.as_ref()),
        "agents": agents,
    });
    if a.json {
        println!("{doc}");
        return Ok(exit::OK);
    }
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            crate::output::clean(s)
        }
    };
    println!("function:    {} ({}/{})", f.id, f.game_id, f.env);
    println!("description: {}", or_dash(&d.description));
    println!("version:     {}", or_dash(&d.version));
    println!(
        "kind:        {}{}{}",
        doc["kind"].as_str().unwrap_or("command"),
        if sem.idempotent { ", idempotent" } else { "" },
        if sem.job {
            ", job (croupier job start)"
        } else {
            ""
        }
    );
    if sem.timeout > 0 {
        println!("timeout:     {}s", sem.timeout);
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "any".to_string()
        } else {
            v.join(", ")
        }
    };
    println!(
        "callers:     roles {}; identities {}",
        list(&auth.allowed_roles),
        list(&auth.allowed_identities)
    );
    if !auth.sensitive_fields.is_empty() {
        println!("masked:      {}", auth.sensitive_fields.join(", "));
    }
    println!("agents:");
    if f.agents.is_empty() {
        println!("  - (none: calls are UNAVAILABLE until an agent provides it)");
    }
    for ag in &f.agents {
        println!(
            "  - {} {}{}",
            ag.agent_id,
            if ag.online { "online" } else { "offline" },
            if ag.version.is_empty() {
                String::new()
            } else {
                format!(" version {}", ag.version)
            }
        );
    }
    for (title, key) in [("params", "params_schema"), ("result", "result_schema")] {
        let schema = &doc[key];
        if schema.as_object().is_some_and(|o| !o.is_empty()) {
            println!(
                "{title} schema:\n{}",
                serde_json::to_string_pretty(schema).unwrap_or_default()
            );
        } else {
            println!("{title} schema: (none: any JSON object)");
        }
    }
    Ok(exit::OK)
}
