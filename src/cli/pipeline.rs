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
use croupier_proto::function::v1::{
    DeletePipelineRequest, GetPipelineRequest, ListPipelinesRequest, PipelineArg, PipelineStep,
    PipelineTemplate, PutPipelineRequest,
};
use croupier_proto::json::{json_to_struct, opt_struct_to_json};
use serde::Deserialize;

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    envs: Vec<String>,
    #[serde(default)]
    args: Vec<ArgFile>,
    steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgFile {
    name: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    default: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    function: String,
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    timeout: i32,
    #[serde(default)]
    continue_on_failure: bool,
}

/// Reads a template file (TOML, or JSON for `.json`).
pub fn read_template(file: &std::path::Path) -> anyhow::Result<PipelineTemplate> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let t: TemplateFile = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a template", file.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a template", file.display()))?
    };
    Ok(PipelineTemplate {
        id: t.id,
        description: t.description,
        envs: t.envs,
        args: t
            .args
            .into_iter()
            .map(|a| PipelineArg {
                name: a.name,
                required: a.required,
                default_value: a.default,
                description: a.description,
            })
            .collect(),
        steps: t
            .steps
            .into_iter()
            .map(|s| PipelineStep {
                name: s.name,
                function_id: s.function,
                args: Some(json_to_struct(&serde_json::Value::Object(s.args))),
                timeout: s.timeout,
                continue_on_failure: s.continue_on_failure,
            })
            .collect(),
    })
}

/// The template as the JSON `get` prints.
fn template_json(t: &PipelineTemplate) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "description": t.description,
        "envs": t.envs,
        "args": t.args.iter().map(|a| serde_json::json!({
            "name": a.name, "required": a.required, "default": a.default_value,
            "description": a.description,
        })).collect::<Vec<_>>(),
        "steps": t.steps.iter().map(|s| serde_json::json!({
            "name": s.name, "function": s.function_id,
            "args": opt_struct_to_json(s.args.as_ref()),
            "timeout": s.timeout, "continue_on_failure": s.continue_on_failure,
        })).collect::<Vec<_>>(),
    })
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
