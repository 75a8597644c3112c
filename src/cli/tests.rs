//! The CLI's contract, checked on its argument tree.

use super::Cli;
use clap::CommandFactory;

/// Commands that run a process or write a script rather than answer with a result.
const NOT_RESULTS: &[&str] = &[
    "croupier server",
    "croupier agent",
    "croupier dev",
    "croupier gateway",
    "croupier completions",
    "croupier bench invoke",
    "croupier bench jobs",
    "croupier bench agents",
    "croupier bench gateway",
    "croupier bench direct-server",
    "croupier bench nats-responder",
    "croupier bench console",
];

fn leaves(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    let path = format!("{path} {}", cmd.get_name()).trim().to_string();
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                leaves(sub, &path, out);
            }
        }
    } else {
        out.push((path, cmd.clone()));
    }
}

#[test]
fn every_command_that_answers_has_json_output() {
    let mut all = Vec::new();
    leaves(&Cli::command(), "", &mut all);
    assert!(all.len() > 20, "{} commands", all.len());
    let missing: Vec<&str> = all
        .iter()
        .filter(|(path, _)| !NOT_RESULTS.contains(&path.as_str()))
        .filter(|(_, cmd)| !cmd.get_arguments().any(|a| a.get_id() == "json"))
        .map(|(path, _)| path.as_str())
        .collect();
    assert!(missing.is_empty(), "no --json on: {missing:?}");
}

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
}
