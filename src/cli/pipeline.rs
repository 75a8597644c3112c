//! `croupier pipeline …`: store, show, list and delete pipeline templates. A template file is
//! TOML or JSON (by extension; anything but `.json` is read as TOML):
//!
//! ```toml
//! id = "deploy"
//! description = "Runs the release in a container"
//! envs = ["REGION"]
//!
//! [[args]]
//! name = "version"
//! required = true
//!
//! [[steps]]
//! name = "announce"
//! function = "container.run"
//! timeout = 60
//! continue_on_failure = false
//! args = { image = "busybox:latest", cmd = ["sh", "-c", "echo ${args.version} in ${env.REGION}"] }
//! ```
//!
//! Start one with `croupier job start pipeline.start --payload '{"template_id": "deploy",
//! "args": {"version": "1.2"}, "envs": {"REGION": "eu"}}' --follow`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use croupier_function::pipeline::file::{parse_template, template_json};
use croupier_proto::function::v1::{
    DeletePipelineRequest, GetPipelineRequest, ListPipelinesRequest, PipelineTemplate,
    PutPipelineRequest,
};

use crate::cli::{Conn, status_error};

/// `croupier pipeline …`.
#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Store (create or replace) a template from a TOML or JSON file (admin certificate).
    Put {
        /// The template file.
        file: PathBuf,
        /// JSON output: `{"id", "revision"}`.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a template (pretty JSON; one line with --json).
    Get {
        /// Template id.
        id: String,
        /// One line of JSON.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// List templates.
    List {
        /// JSON output: `{"pipelines": [templates]}`.
        #[arg(long)]
        json: bool,
        /// Connection.
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a template (admin certificate).
    Delete {
        /// Template id.
        id: String,
        /// JSON output: `{"id", "deleted"}`.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

/// A template file.
/// Reads a template file (TOML, or JSON for `.json`).
pub fn read_template(file: &std::path::Path) -> anyhow::Result<PipelineTemplate> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let json = file.extension().is_some_and(|e| e == "json");
    parse_template(&text, json)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{} is not a template", file.display()))
}

/// Runs a `croupier pipeline` command.
pub async fn run(cmd: PipelineCommand) -> anyhow::Result<()> {
    match cmd {
        PipelineCommand::Put { file, json, conn } => {
            let template = read_template(&file)?;
            let id = template.id.clone();
            let client = conn.client("admin-admin").await?;
            let r = client
                .function_service()
                .put_pipeline(PutPipelineRequest {
                    template: Some(template),
                })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            if json {
                println!("{}", serde_json::json!({"id": id, "revision": r.revision}));
            } else {
                println!("stored pipeline {id} (revision {})", r.revision);
            }
        }
        PipelineCommand::Get { id, json, conn } => {
            let client = conn.client("client-dev").await?;
            let t = client
                .function_service()
                .get_pipeline(GetPipelineRequest { id })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner()
                .template
                .context("no template in the answer")?;
            if json {
                println!("{}", template_json(&t));
            } else {
                println!("{}", serde_json::to_string_pretty(&template_json(&t))?);
            }
        }
        PipelineCommand::List { json, conn } => {
            let client = conn.client("client-dev").await?;
            let list = client
                .function_service()
                .list_pipelines(ListPipelinesRequest {})
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            if json {
                let all: Vec<serde_json::Value> =
                    list.templates.iter().map(template_json).collect();
                println!("{}", serde_json::json!({ "pipelines": all }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .templates
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.steps.len().to_string(),
                        t.args
                            .iter()
                            .map(|a| {
                                if a.required {
                                    format!("{}*", a.name)
                                } else {
                                    a.name.clone()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        t.description.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(&["ID", "STEPS", "ARGS (* required)", "DESCRIPTION"], &rows)
            );
        }
        PipelineCommand::Delete { id, json, conn } => {
            let client = conn.client("admin-admin").await?;
            let r = client
                .function_service()
                .delete_pipeline(DeletePipelineRequest { id: id.clone() })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            if !r.deleted {
                return Err(super::exit::Failure {
                    code: super::exit::REFUSED,
                    message: format!(
                        "pipeline {id} does not exist; `croupier pipeline list` shows those there are"
                    ),
                }
                .into());
            }
            if json {
                println!("{}", serde_json::json!({"id": id, "deleted": true}));
            } else {
                println!("deleted pipeline {id}");
            }
        }
    }
    Ok(())
}
