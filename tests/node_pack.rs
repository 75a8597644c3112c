//! End-to-end: the agent's `node` pack through real server and agent processes — `node.metrics`
//! and `node.resources` agree with what `/proc` says about this machine, heartbeats carry the
//! CPU and memory summary, `--packs none` leaves the pack out and an unknown pack name stops
//! the agent at startup.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, bin, opts};
use croupier_proto::json::opt_struct_to_json;
use serde_json::{Value, json};
use tonic::Code;

/// The server's heartbeat interval; agents round it up to whole seconds.
const HB: Duration = Duration::from_secs(1);

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `MemTotal` from /proc/meminfo, in bytes (the file says kB and means KiB).
fn mem_total_bytes() -> u64 {
    let line = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal line")
        .to_string();
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal value");
    kib * 1024
}

/// Logical CPUs: the `processor` lines of /proc/cpuinfo.
fn cpuinfo_processors() -> usize {
    read("/proc/cpuinfo")
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count()
}

/// The three load averages of /proc/loadavg.
fn loadavg() -> [f64; 3] {
    let s = read("/proc/loadavg");
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    [v[0], v[1], v[2]]
}

fn uptime_secs() -> f64 {
    read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap()
}

/// Size and available bytes of the file system at `/`, as `df` reports them.
fn df_root() -> Option<(u64, u64)> {
    let out = Command::new("df")
        .args(["-B1", "--output=size,avail", "/"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nums = text.lines().nth(1)?.split_whitespace();
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pack_reports_this_machine() {
    let mesh = Mesh::start(&["n1", "bare"], HB);
    let c = mesh.client("client-c1").await;

    // An agent without packs serves the built-ins only: node.metrics is not found.
    let _bare = mesh.agent_with("bare", &[], &["--packs", "none"]);
    mesh.wait_online(&["bare"]).await;
    let e = c
        .invoke("node.metrics", json!({}), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("node.metrics"), "{}", e.message());
    let bare = c.agents("g", "e").await.unwrap();
    let bare = bare.iter().find(|a| a.agent_id == "bare").unwrap();
    assert!(bare.functions.contains(&"agent.ping".to_string()));
    assert!(
        !bare.functions.iter().any(|f| f.starts_with("node.")),
        "{:?}",
        bare.functions
    );

    // An agent with the default packs.
    let _n1 = mesh.agent("n1", &[]);
    mesh.wait_online(&["n1"]).await;

    // node.metrics
    let load_before = loadavg();
    let t = Instant::now();
    let r = c.invoke("node.metrics", json!({}), &opts()).await.unwrap();
    let took = t.elapsed();
    let load_after = loadavg();
    assert!(r.success, "{r:?}");
    assert_eq!(r.agent_id, "n1");
    assert!(took < Duration::from_secs(3), "node.metrics took {took:?}");
    let m = opt_struct_to_json(r.result.as_ref());

    assert_eq!(m["memory"]["total_bytes"].as_u64(), Some(mem_total_bytes()));
    let used = m["memory"]["used_bytes"].as_u64().unwrap();
    let available = m["memory"]["available_bytes"].as_u64().unwrap();
    assert_eq!(used + available, mem_total_bytes(), "{m:#}");

    let cpus = cpuinfo_processors();
    assert!(cpus >= std::thread::available_parallelism().unwrap().get());
    let per_core = m["cpu"]["per_core_percent"].as_array().unwrap();
    assert_eq!(per_core.len(), cpus, "{m:#}");
    for u in per_core.iter().chain([&m["cpu"]["usage_percent"]]) {
        assert!((0.0..=100.0).contains(&num(u)), "{m:#}");
    }
    let window = m["sample_window_ms"].as_u64().unwrap();
    assert!((200..=5_000).contains(&window), "window {window} ms");

    // The agent read /proc/loadavg between our two reads: its value lies between them.
    for (i, key) in ["one", "five", "fifteen"].iter().enumerate() {
        let got = num(&m["load_average"][key]);
        let (lo, hi) = (
            load_before[i].min(load_after[i]),
            load_before[i].max(load_after[i]),
        );
        assert!(
            got >= lo - 0.01 && got <= hi + 0.01,
            "load {key}: {got} not within {lo}..{hi}"
        );
    }

    let uptime = num(&m["uptime_secs"]);
    assert!((uptime - uptime_secs()).abs() <= 3.0, "uptime {uptime}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert!((num(&m["timestamp_ms"]) - now_ms).abs() < 10_000.0);
    assert!(m["processes"].as_u64().unwrap() > 1);

    let networks = m["networks"].as_array().unwrap();
    let lo = networks
        .iter()
        .find(|n| n["interface"] == "lo")
        .unwrap_or_else(|| panic!("no lo in {networks:?}"));
    // The call itself went over loopback.
    assert!(lo["rx_bytes_total"].as_u64().unwrap() > 0, "{lo}");
    assert!(num(&lo["rx_bytes_per_sec"]) >= 0.0);

    if let (Some((size, _)), Some(root)) = (
        df_root(),
        m["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["mount_point"] == "/"),
    ) {
        assert_eq!(root["total_bytes"].as_u64(), Some(size), "{root}");
        let used = root["used_bytes"].as_u64().unwrap();
        let avail = root["available_bytes"].as_u64().unwrap();
        assert_eq!(used + avail, size);
    }

    // node.resources
    let r = c
        .invoke("node.resources", json!({}), &opts())
        .await
        .unwrap();
    assert!(r.success, "{r:?}");
    let inv = opt_struct_to_json(r.result.as_ref());
    assert_eq!(
        inv["hostname"].as_str(),
        Some(read("/proc/sys/kernel/hostname").trim())
    );
    assert_eq!(inv["cpu"]["logical_cpus"].as_u64(), Some(cpus as u64));
    if let Some(cores) = inv["cpu"]["physical_cores"].as_u64() {
        assert!(cores >= 1 && cores as usize <= cpus, "{inv:#}");
    }
    assert_eq!(
        inv["memory"]["total_bytes"].as_u64(),
        Some(mem_total_bytes())
    );
    assert_eq!(inv["os"]["arch"], std::env::consts::ARCH);
    assert_eq!(
        inv["os"]["kernel_version"].as_str(),
        Some(read("/proc/sys/kernel/osrelease").trim())
    );
    let nics = inv["networks"].as_array().unwrap();
    let lo = nics.iter().find(|n| n["interface"] == "lo").unwrap();
    assert!(
        lo["addresses"]
            .as_array()
            .unwrap()
            .contains(&json!({"address": "127.0.0.1", "prefix": 8})),
        "{lo}"
    );
    // With dockerd running (required in CI), its version as `docker version` says it; without,
    // null and the reason.
    if common::docker_ready() {
        let (_, server_version, _) =
            common::docker(&["version", "--format", "{{.Server.Version}}"]);
        assert_eq!(inv["docker"]["version"], server_version.as_str(), "{inv:#}");
        assert!(inv["docker_error"].is_null(), "{inv:#}");
    } else {
        assert!(inv["docker"].is_null(), "{inv:#}");
        let why = inv["docker_error"].as_str().unwrap_or_default();
        assert!(why.contains("Docker"), "{inv:#}");
    }

    // Targeted at the agent without packs: NOT_FOUND, naming the function.
    let mut o = opts();
    o.routing = "targeted".into();
    o.target = "bare".into();
    let e = c.invoke("node.metrics", json!({}), &o).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("node.metrics"), "{}", e.message());

    // Heartbeats carry the summary, for the SDK client and `croupier agents --json`.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let agents = c.agents("g", "e").await.unwrap();
        let n1 = agents.iter().find(|a| a.agent_id == "n1").unwrap();
        if n1.status.contains_key("cpu_percent") {
            break n1.status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no summary in heartbeats: {:?}",
            n1.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for key in ["cpu_percent", "memory_percent"] {
        let v: f64 = status[key].parse().unwrap();
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert!(status.contains_key("in_flight"), "{status:?}");
    let bare = c.agents("g", "e").await.unwrap();
    let bare = bare.iter().find(|a| a.agent_id == "bare").unwrap();
    assert!(
        !bare.status.contains_key("cpu_percent"),
        "{:?}",
        bare.status
    );

    let out = Command::new(bin())
        .args(["agents", "--json", "--server", &mesh.url, "--tls-dir"])
        .arg(mesh.certs())
        .args(["--identity", "client-c1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n1 = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "n1")
        .unwrap();
    let mem: f64 = n1["status"]["memory_percent"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(mem > 0.0 && mem <= 100.0, "{n1}");
    assert!(n1["status"]["cpu_percent"].is_string(), "{n1}");
}

#[test]
fn unknown_pack_stops_the_agent_at_startup() {
    for (flag, env) in [(Some("node,bogus"), None), (None, Some("bogus"))] {
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "--id", "a1", "--server", "https://127.0.0.1:1"]);
        if let Some(f) = flag {
            cmd.args(["--packs", f]);
        }
        cmd.env_remove("CROUPIER_PACKS");
        if let Some(e) = env {
            cmd.env("CROUPIER_PACKS", e);
        }
        let out = cmd.output().expect("running croupier agent");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unknown pack \"bogus\"") && err.contains("known packs: node"),
            "{err}"
        );
    }
}
