//! `croupier function register|delete`: descriptors set by admins.

use super::*;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

/// `croupier function …`.
#[derive(Subcommand, Debug)]
pub enum FunctionCommand {
    /// Set a function's descriptor from a JSON or TOML file (id, description, params_schema,
    /// allowed_roles, sensitive_fields, timeout_secs, …). With an admin certificate the
    /// descriptor wins over whatever agents declare.
    Register {
        /// The descriptor file (.json or .toml).
        file: PathBuf,
        /// Game.
        #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
        game_id: String,
        /// Environment.
        #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
        env: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a function's descriptor (admin certificate). Agents that still provide the
    /// function keep serving it; the next one to register declares its descriptor again.
    Delete {
        /// Function id.
        function: String,
        /// Game.
        #[arg(long, env = "CROUPIER_GAME_ID", default_value = "default")]
        game_id: String,
        /// Environment.
        #[arg(long, env = "CROUPIER_ENV", default_value = "dev")]
        env: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `croupier function …`.
pub async fn function(cmd: FunctionCommand) -> anyhow::Result<()> {
    match cmd {
        FunctionCommand::Register {
            file,
            game_id,
            env,
            json,
            conn,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let record: croupier_registry::model::DescriptorRecord =
                if file.extension().is_some_and(|e| e == "toml") {
                    toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
                } else {
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", file.display()))?
                };
            let client = conn.client("admin-admin").await?;
            let revision = client
                .register_function(&game_id, &env, record.to_proto())
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"function_id": record.id, "game_id": game_id,
                        "env": env, "revision": revision})
                );
            } else {
                println!(
                    "registered the descriptor of {} in {game_id}/{env} (revision {revision})",
                    record.id
                );
            }
        }
        FunctionCommand::Delete {
            function,
            game_id,
            env,
            json,
            conn,
        } => {
            let client = conn.client("admin-admin").await?;
            let deleted = client
                .delete_function(&game_id, &env, &function)
                .await
                .map_err(|s| status_error(&s))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"function_id": function, "game_id": game_id,
                        "env": env, "deleted": deleted})
                );
            } else if deleted {
                println!("deleted the descriptor of {function} in {game_id}/{env}");
            } else {
                println!("{function} in {game_id}/{env} had no descriptor");
            }
        }
    }
    Ok(())
}
