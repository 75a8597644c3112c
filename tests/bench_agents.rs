//! `croupier bench agents` runs in a short mode against a real etcd: two server processes,
//! a few hundred lightweight agents (each with its own certificate, connection and source
//! address), watchers, the owner and forwarded invoke phases and the reconnect storm after a
//! kill of the owning server. Every phase must report; no timing is asserted (figures on a
//! shared machine are for the note).

use croupier_registry::store::conformance::etcd_or_skip;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_bench_runs_every_phase_and_every_agent_comes_back_after_the_storm() {
    let Some(etcd) = etcd_or_skip().await else {
        return;
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_croupier"))
        .args(["--log", "warn", "bench", "agents", "--agents", "300"])
        .args(["--etcd-endpoints", &etcd.endpoint])
        .args(["--hold", "2s", "--heartbeat", "1s", "--watchers", "60"])
        .args(["--changes", "3", "--invoke-duration", "1s"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for phase in [
        "register all:",
        "holding, heartbeat 1s over the tunnel:",
        "holding, heartbeats by rpc instead:",
        "change via a seen by 60 watchers on b (3 changes, 180 samples)",
        "via another replica",
        "forwarded path a",
        "all 300 agents online again",
    ] {
        assert!(
            stdout.contains(phase),
            "no {phase:?} in:\n{stdout}\n{stderr}"
        );
    }
    // Heartbeats were counted while holding (1 s interval, 2 s hold, 300 agents).
    let line = stdout
        .lines()
        .find(|l| l.starts_with("holding"))
        .unwrap_or_default();
    let heartbeats: u64 = line
        .split("; ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no heartbeat count in {line:?}"));
    assert!(heartbeats >= 300, "{heartbeats} heartbeats in: {line}");
}
