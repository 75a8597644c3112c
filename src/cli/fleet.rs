//! The fleet on the command line: `croupier node resources` (a node's inventory, its history
//! and the difference between two versions) and `croupier events` (node events, replayed and
//! followed).

use super::*;
use crate::output::{clean, table, time};
use croupier_proto::control::v1::{
    GetNodeResourcesResponse, InventoryVersion, NodeEvent, NodeInventory, StreamNodeEventsRequest,
};

/// `croupier events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only this node's events.
    #[arg(long)]
    pub node: Option<String>,
    /// Only events of this type (`container.die`), or of this prefix when it ends with a dot
    /// (`container.`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Replay the events of this long ago until now (default 1h unless --from-seq is given).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Replay from this seq on (resume where a previous run stopped).
    #[arg(long)]
    pub from_seq: Option<i64>,
    /// Keep following new events (Ctrl-C ends).
    #[arg(long, short)]
    pub follow: bool,
    /// JSON output: one object per line (events, and gaps as {"gap_from", "gap_next"}).
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `croupier events`.
pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let client = args.conn.client("client-dev").await?;
    let since = match (args.from_seq, args.since) {
        (Some(_), _) => 0,
        (None, since) => {
            let ago = since.unwrap_or(Duration::from_secs(3600));
            croupier_registry::model::now_ms() - ago.as_millis() as i64
        }
    };
    let mut stream = client
        .node_events(StreamNodeEventsRequest {
            node_id: args.node.unwrap_or_default(),
            r#type: args.event_type.unwrap_or_default(),
            since,
            from_seq: args.from_seq.unwrap_or(0),
            follow: args.follow,
        })
        .await
        .map_err(|s| status_error(&s))?;
    if !args.json {
        println!(
            "{:<32} {:>6}  {:<16} {:<20} {:<12} {:<14} MESSAGE",
            "TIME", "SEQ", "NODE", "TYPE", "STATUS", "ENTITY"
        );
    }
    let mut shown = 0usize;
    loop {
        let item = tokio::select! {
            m = stream.message() => m.map_err(|s| status_error(&s))?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(item) = item else { break };
        match item.event {
            Some(e) if args.json => println!("{}", event_json(&e)),
            Some(e) => println!("{}", event_line(&e)),
            None if args.json => println!(
                "{}",
                serde_json::json!({"gap_from": item.gap_from, "gap_next": item.gap_next})
            ),
            None => println!(
                "-- events {}..{} were dropped by the server's retention --",
                item.gap_from,
                item.gap_next - 1
            ),
        }
        shown += 1;
    }
    if !args.json && shown == 0 {
        eprintln!("no events (this server's log; events of agents on other servers are there)");
    }
    Ok(())
}

fn event_line(e: &NodeEvent) -> String {
    let entity: String = e.entity_id.chars().take(12).collect();
    format!(
        "{:<32} {:>6}  {:<16} {:<20} {:<12} {:<14} {}",
        time(e.timestamp),
        e.seq,
        clean(&e.node_id),
        clean(&e.r#type),
        clean(&e.status),
        clean(&entity),
        clean(&e.message)
    )
}

fn event_json(e: &NodeEvent) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "type": e.r#type,
        "node_id": e.node_id,
        "entity_id": e.entity_id,
        "status": e.status,
        "message": e.message,
        "timestamp": e.timestamp,
        "received_at": e.received_at,
        "game_id": e.game_id,
        "env": e.env,
        "data": e.data,
    })
}

/// Runs `croupier node metrics`. A bare name (`cpu`) selects every metric under it.
pub async fn metrics(
    agent: &str,
    since: Duration,
    wanted: &[String],
    json: bool,
    conn: &Conn,
) -> anyhow::Result<()> {
    let client = conn.client("client-dev").await?;
    let wanted: Vec<String> = wanted
        .iter()
        .flat_map(|w| {
            if w.ends_with('.') {
                vec![w.clone()]
            } else {
                vec![w.clone(), format!("{w}.")]
            }
        })
        .collect();
    let since_ms = croupier_registry::model::now_ms() - since.as_millis() as i64;
    let resp = client
        .node_metrics(agent, since_ms, &wanted)
        .await
        .map_err(|s| status_error(&s))?;
    if json {
        let series: Vec<serde_json::Value> = resp
            .series
            .iter()
            .map(|s| {
                let points: Vec<serde_json::Value> = s
                    .points
                    .iter()
                    .map(|p| {
                        serde_json::json!({"timestamp": p.timestamp, "value": p.value,
                            "min": p.min, "max": p.max})
                    })
                    .collect();
                serde_json::json!({"name": s.name, "points": points})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"agent_id": agent, "raw_since": resp.raw_since,
                "step_ms": resp.step_ms, "series": series})
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = resp
        .series
        .iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| {
            let values: Vec<f64> = s.points.iter().map(|p| p.value).collect();
            let min = s.points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
            let max = s
                .points
                .iter()
                .map(|p| p.max)
                .fold(f64::NEG_INFINITY, f64::max);
            let avg = values.iter().sum::<f64>() / values.len() as f64;
            vec![
                clean(&s.name),
                number(*values.last().unwrap_or(&0.0)),
                number(min),
                number(avg),
                number(max),
                sparkline(&values, 40),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("{agent}: no samples in that time");
        return Ok(());
    }
    print!(
        "{}",
        table(&["METRIC", "LAST", "MIN", "AVG", "MAX", "HISTORY"], &rows)
    );
    Ok(())
}

/// A figure in few characters: 1234567 → "1.23M", 12.345 → "12.3".
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `values` as at most `width` block characters (averaged when there are more values),
/// scaled between their minimum and maximum.
fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() {
        return String::new();
    }
    let per = values.len().div_ceil(width.max(1));
    let cols: Vec<f64> = values
        .chunks(per)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let (lo, hi) = cols
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(*v), h.max(*v))
        });
    cols.iter()
        .map(|v| {
            if (hi - lo).abs() < f64::EPSILON {
                BARS[0]
            } else {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// Runs `croupier node resources`.
pub async fn resources(
    agent: &str,
    history: bool,
    diff: Option<(i64, i64)>,
    json: bool,
    conn: &Conn,
) -> anyhow::Result<()> {
    let client = conn.client("client-dev").await?;
    let resp = client
        .node_resources(agent, history, diff)
        .await
        .map_err(|s| status_error(&s))?;
    if json {
        println!("{}", resources_json(agent, &resp));
        return Ok(());
    }
    if let Some((from, to)) = diff {
        if resp.changes.is_empty() {
            println!("{agent}: versions {from} and {to} are the same");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = resp
            .changes
            .iter()
            .map(|c| vec![clean(&c.path), clean(&c.before), clean(&c.after)])
            .collect();
        print!(
            "{}",
            table(&["PATH", &format!("V{from}"), &format!("V{to}")], &rows)
        );
        return Ok(());
    }
    if history {
        let rows: Vec<Vec<String>> = resp
            .versions
            .iter()
            .map(|v| {
                let collected = v.inventory.as_ref().map_or(0, |i| i.collected_at);
                vec![v.version.to_string(), time(v.recorded_at), time(collected)]
            })
            .collect();
        print!("{}", table(&["VERSION", "RECORDED", "COLLECTED"], &rows));
        return Ok(());
    }
    if let Some(v) = resp.versions.last() {
        print!("{}", describe(agent, v));
    }
    Ok(())
}

fn resources_json(agent: &str, resp: &GetNodeResourcesResponse) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = resp
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "version": v.version,
                "recorded_at": v.recorded_at,
                "inventory": v.inventory,
            })
        })
        .collect();
    let changes: Vec<serde_json::Value> = resp
        .changes
        .iter()
        .map(|c| serde_json::json!({"path": c.path, "before": c.before, "after": c.after}))
        .collect();
    serde_json::json!({"agent_id": agent, "versions": versions, "changes": changes})
}

/// `bytes` in the largest binary unit that keeps it at least 1.
fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The human summary of one inventory version.
fn describe(agent: &str, v: &InventoryVersion) -> String {
    let inv: NodeInventory = v.inventory.clone().unwrap_or_default();
    let mut out = format!(
        "{} — inventory version {} (recorded {})\n",
        clean(agent),
        v.version,
        time(v.recorded_at)
    );
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<10}{}\n", clean(&val)));
    line("type", inv.node_type.clone());
    line("host", inv.hostname.clone());
    if let Some(c) = &inv.cpu {
        line(
            "cpu",
            format!(
                "{} · {} cores / {} threads · {} MHz · cache {} · {}",
                c.model,
                c.cores,
                c.threads,
                c.frequency_mhz,
                size(c.cache_bytes),
                c.arch
            ),
        );
    }
    if let Some(m) = &inv.memory {
        line(
            "memory",
            format!(
                "{} (swap {})",
                size(m.total_bytes),
                size(m.swap_total_bytes)
            ),
        );
    }
    if let (Some(o), Some(k)) = (&inv.os, &inv.kernel) {
        line(
            "os",
            format!(
                "{} {} ({}), kernel {}",
                o.distribution, o.version, o.arch, k.release
            ),
        );
    }
    if let Some(r) = &inv.runtimes {
        let or_none = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        line(
            "runtimes",
            format!(
                "docker {}, containerd {}, runc {}",
                or_none(&r.docker),
                or_none(&r.containerd),
                or_none(&r.runc)
            ),
        );
    }
    if inv.gpus.is_empty() {
        line("gpus", "none".into());
    }
    for g in &inv.gpus {
        line(
            "gpu",
            format!(
                "{} · {} · driver {} · compute {} · CUDA {} · {} W",
                g.model,
                size(g.memory_bytes),
                g.driver_version,
                g.compute_capability,
                g.cuda_version,
                g.power_limit_watts
            ),
        );
    }
    for d in &inv.disks {
        line(
            "disk",
            format!(
                "{} on {} ({}, {}, {}{})",
                d.name,
                d.mount_point,
                d.file_system,
                d.kind,
                size(d.total_bytes),
                if d.model.is_empty() {
                    String::new()
                } else {
                    format!(", {}", d.model)
                }
            ),
        );
    }
    for n in &inv.nics {
        let speed = if n.speed_mbps > 0 {
            format!(" {} Mbit/s", n.speed_mbps)
        } else {
            String::new()
        };
        line(
            "nic",
            format!("{} {} {}{speed}", n.name, n.mac, n.addresses.join(" ")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_and_numbers_shorten() {
        assert_eq!(sparkline(&[0.0, 7.0], 40), "▁█");
        assert_eq!(sparkline(&[5.0, 5.0, 5.0], 40), "▁▁▁");
        assert_eq!(
            sparkline(&(0..100).map(f64::from).collect::<Vec<_>>(), 10)
                .chars()
                .count(),
            10
        );
        assert_eq!(number(1_234_567.0), "1.23M");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(42.0), "42");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(8 << 30), "8.0 GiB");
        assert_eq!(size(1536), "1.5 KiB");
    }
}
