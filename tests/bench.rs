//! `croupier bench invoke` runs in a short mode: the deployed shape (server and agent processes,
//! the direct echo server, nats-server and its responder) and the in-process mode produce every
//! phase they promise. No timing is asserted: figures on a shared machine are for the note.

mod common;

use serde_json::Value;

/// nats-server is part of the test setup (scripts/test.sh installs it); without it the run
/// leaves NATS out, unless CROUPIER_REQUIRE_NATS=1 makes that a failure.
fn nats_present() -> bool {
    let found = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var("CROUPIER_REQUIRE_NATS").as_deref() != Ok("1"),
        "nats-server is required (CROUPIER_REQUIRE_NATS=1) but not on PATH"
    );
    found
}

fn bench(args: &[&str]) -> Value {
    let out = std::process::Command::new(common::bin())
        .args(["--log", "warn", "bench", "invoke", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_invoke_bench_measures_every_path_of_the_deployed_shape() {
    let nats = nats_present();
    let mut args = vec![
        "--duration",
        "300ms",
        "--rounds",
        "2",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--agents",
        "2",
        // The agents run on one worker thread each (`croupier agent --worker-threads`).
        "--agent-threads",
        "1",
    ];
    if !nats {
        args.push("--skip-nats");
    }
    let v = bench(&args);
    assert_eq!(v["mode"], "deployed");
    let phases = v["phases"].as_array().unwrap();
    let mut paths = vec!["direct", "mesh"];
    if nats {
        paths.push("nats");
    }
    for round in 0..2 {
        for path in &paths {
            for (c, conns) in [(1, 1), (4, 1)] {
                let p = phases
                    .iter()
                    .find(|p| {
                        p["path"] == *path
                            && p["round"] == round
                            && p["concurrency"] == c
                            && p["connections"] == conns
                    })
                    .unwrap_or_else(|| panic!("no {path} c{c} round {round}: {v}"));
                assert!(p["calls"].as_u64().unwrap() > 0, "{p}");
                // The servers did the work: their CPU time was read from /proc (in ticks of
                // 10 ms, so a short phase at concurrency 1 may read none).
                let cpu = p["server_cpu_us_per_call"].as_f64().unwrap();
                assert!(if c == 1 { cpu >= 0.0 } else { cpu > 0.0 }, "{p}");
                assert!(p["switches_per_call"].as_f64().unwrap() > 0.0, "{p}");
            }
        }
        assert!(
            phases
                .iter()
                .any(|p| p["path"] == "mesh" && p["round"] == round && p["connections"] == 2),
            "{v}"
        );
    }
    let m = &v["medians"];
    assert!(m["mesh_over_direct_p50_c1"].as_f64().unwrap() > 0.0, "{m}");
    assert!(
        m["mesh_over_direct_throughput"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    if nats {
        assert!(
            m["mesh_over_nats_throughput"].as_f64().unwrap() > 0.0,
            "{m}"
        );
    }
}

#[test]
fn the_in_process_mode_still_runs() {
    let v = bench(&["--in-process", "--duration", "200ms", "--concurrency", "4"]);
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 4, "{v}");
    assert!(
        phases.iter().all(|p| p["calls"].as_u64().unwrap() > 0),
        "{v}"
    );
}
