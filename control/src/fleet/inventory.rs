//! Node inventories: the checks an inventory must pass, the stored version record, and the
//! difference between two versions.

use std::collections::BTreeMap;

use croupier_proto::control::v1::{InventoryChange, NodeInventory};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Node types an inventory may declare.
pub const NODE_TYPES: [&str; 3] = ["physical", "virtual", "container"];
/// Most disks, NICs or GPUs in one inventory.
const MAX_ITEMS: usize = 256;
/// Most characters of one text field.
const MAX_TEXT: usize = 256;
/// Most addresses of one NIC.
const MAX_ADDRESSES: usize = 64;

/// One stored inventory version (JSON in the store).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InventoryRecord {
    /// 1, 2, 3… per node.
    pub version: i64,
    /// When the server stored it, Unix ms.
    pub recorded_at: i64,
    /// The node's game when it reported it (for scope checks once the node is gone).
    pub game_id: String,
    /// The node's environment when it reported it.
    pub env: String,
    /// The inventory.
    pub inventory: NodeInventory,
}

/// Checks an inventory: complete (node type, CPU, memory, OS, kernel, host name) and valid
/// (known node type, MACs and addresses that parse, bounded sizes). The error lists every
/// problem, each naming its field and what to send instead.
pub fn validate(inv: &NodeInventory) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    need(
        NODE_TYPES.contains(&inv.node_type.as_str()),
        format!(
            "node_type is {:?}: send one of {}",
            short(&inv.node_type),
            NODE_TYPES.join(", ")
        ),
    );
    need(!inv.hostname.is_empty(), "hostname is missing".into());
    match &inv.cpu {
        None => need(false, "cpu is missing".into()),
        Some(c) => {
            need(
                c.threads >= 1,
                "cpu.threads is 0: send the number of logical CPUs".into(),
            );
            need(
                c.cores <= c.threads,
                format!(
                    "cpu.cores ({}) is more than cpu.threads ({})",
                    c.cores, c.threads
                ),
            );
            need(!c.arch.is_empty(), "cpu.arch is missing".into());
        }
    }
    match &inv.memory {
        None => need(false, "memory is missing".into()),
        Some(m) => need(m.total_bytes > 0, "memory.total_bytes is 0".into()),
    }
    match &inv.os {
        None => need(false, "os is missing".into()),
        Some(o) => {
            need(
                !o.distribution.is_empty(),
                "os.distribution is missing".into(),
            );
            need(!o.arch.is_empty(), "os.arch is missing".into());
        }
    }
    match &inv.kernel {
        None => need(false, "kernel is missing".into()),
        Some(k) => need(!k.release.is_empty(), "kernel.release is missing".into()),
    }
    for (what, n) in [
        ("disks", inv.disks.len()),
        ("nics", inv.nics.len()),
        ("gpus", inv.gpus.len()),
    ] {
        need(
            n <= MAX_ITEMS,
            format!("{what} has {n} entries; at most {MAX_ITEMS}"),
        );
    }
    for nic in &inv.nics {
        need(
            nic.mac.is_empty() || is_mac(&nic.mac),
            format!(
                "nics[{}].mac {:?} is not a MAC address",
                short(&nic.name),
                short(&nic.mac)
            ),
        );
        need(
            nic.addresses.len() <= MAX_ADDRESSES,
            format!(
                "nics[{}] has more than {MAX_ADDRESSES} addresses",
                short(&nic.name)
            ),
        );
        for a in &nic.addresses {
            need(
                is_cidr(a),
                format!(
                    "nics[{}].addresses: {:?} is not an IP address with a prefix length (10.0.0.5/24)",
                    short(&nic.name),
                    short(a)
                ),
            );
        }
    }
    for g in &inv.gpus {
        need(!g.model.is_empty(), "gpus: a GPU without a model".into());
    }
    if let Some(field) = long_text(inv) {
        need(
            false,
            format!("{field} is longer than {MAX_TEXT} characters"),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid inventory: {}", problems.join("; ")))
    }
}

fn short(s: &str) -> String {
    croupier_proto::limits::excerpt(s, 64)
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}

/// The path of the first text field longer than [`MAX_TEXT`], if any.
fn long_text(inv: &NodeInventory) -> Option<String> {
    let value = serde_json::to_value(inv).ok()?;
    leaves(&value)
        .into_iter()
        .find(|(_, v)| v.as_str().is_some_and(|s| s.chars().count() > MAX_TEXT))
        .map(|(path, _)| path)
}

/// What changed from `before` to `after`, by path, sorted. Disks are matched by mount point,
/// NICs by name and GPUs by model rather than by position, so a new NIC reads as one added
/// entry and not as every later one changed. `collected_at` is left out.
pub fn diff(before: &NodeInventory, after: &NodeInventory) -> Vec<InventoryChange> {
    let flat = |i: &NodeInventory| -> BTreeMap<String, Value> {
        serde_json::to_value(i)
            .map(|v| leaves(&v).into_iter().collect())
            .unwrap_or_default()
    };
    let (a, b) = (flat(before), flat(after));
    let text = |v: Option<&Value>| v.map(Value::to_string).unwrap_or_default();
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| p.as_str() != "collected_at" && a.get(*p) != b.get(*p))
        .map(|p| InventoryChange {
            path: p.clone(),
            before: text(a.get(p)),
            after: text(b.get(p)),
        })
        .collect()
}

/// Every leaf of `v` with its path. Arrays of objects are keyed by the entry's identifying
/// field (`mount_point`, `name`, `model`), other arrays are leaves.
fn leaves(v: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    walk(String::new(), v, &mut out);
    out
}

fn walk(path: String, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(p, v, out);
            }
        }
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let key = ["mount_point", "name", "model"]
                    .iter()
                    .find_map(|k| {
                        item.get(*k)
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                    })
                    .map_or_else(|| i.to_string(), str::to_string);
                walk(format!("{path}[{key}]"), item, out);
            }
        }
        leaf => out.push((path, leaf.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use croupier_proto::control::v1::{CpuInfo, KernelInfo, MemoryInfo, NicInfo, OsInfo};

    pub(crate) fn sample() -> NodeInventory {
        NodeInventory {
            node_type: "virtual".into(),
            hostname: "gs-1".into(),
            cpu: Some(CpuInfo {
                model: "EPYC".into(),
                cores: 2,
                threads: 4,
                arch: "x86_64".into(),
                ..Default::default()
            }),
            memory: Some(MemoryInfo {
                total_bytes: 8 << 30,
                ..Default::default()
            }),
            os: Some(OsInfo {
                distribution: "Debian GNU/Linux".into(),
                version: "12".into(),
                arch: "x86_64".into(),
            }),
            kernel: Some(KernelInfo {
                major: 6,
                minor: 1,
                patch: 0,
                release: "6.1.0-18-amd64".into(),
            }),
            nics: vec![NicInfo {
                name: "eth0".into(),
                mac: "02:42:ac:11:00:02".into(),
                addresses: vec!["172.17.0.2/16".into()],
                speed_mbps: 1000,
            }],
            collected_at: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_complete_inventory_passes() {
        validate(&sample()).unwrap();
    }

    #[test]
    fn every_problem_is_named() {
        let mut inv = sample();
        inv.node_type = "mainframe".into();
        inv.memory = None;
        inv.nics[0].mac = "zz".into();
        inv.nics[0].addresses.push("10.0.0.1".into());
        inv.cpu.as_mut().unwrap().threads = 0;
        let e = validate(&inv).unwrap_err();
        for want in [
            "node_type is \"mainframe\": send one of physical, virtual, container",
            "memory is missing",
            "nics[eth0].mac \"zz\"",
            "\"10.0.0.1\" is not an IP address with a prefix length",
            "cpu.threads is 0",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        let mut inv = sample();
        inv.hostname = "x".repeat(300);
        assert!(
            validate(&inv)
                .unwrap_err()
                .contains("hostname is longer than 256")
        );
    }

    #[test]
    fn diff_matches_entries_by_name_and_ignores_collection_time() {
        let a = sample();
        let mut b = sample();
        b.collected_at = 99;
        assert!(a.same_as(&b));
        assert!(diff(&a, &b).is_empty());
        b.memory.as_mut().unwrap().total_bytes = 16 << 30;
        b.nics.insert(
            0,
            NicInfo {
                name: "docker0".into(),
                ..Default::default()
            },
        );
        assert!(!a.same_as(&b));
        let changes = diff(&a, &b);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        // eth0 moved to position 1 but is matched by name: only docker0 is new.
        assert!(paths.contains(&"memory.total_bytes"), "{paths:?}");
        assert!(paths.contains(&"nics[docker0].name"), "{paths:?}");
        assert!(
            !paths.iter().any(|p| p.starts_with("nics[eth0]")),
            "{paths:?}"
        );
        let mem = changes
            .iter()
            .find(|c| c.path == "memory.total_bytes")
            .unwrap();
        assert_eq!(mem.before, (8u64 << 30).to_string());
        assert_eq!(mem.after, (16u64 << 30).to_string());
        let added = changes
            .iter()
            .find(|c| c.path == "nics[docker0].name")
            .unwrap();
        assert_eq!(added.before, "");
    }
}
