//! Child processes that the benchmarks and the end-to-end tests start: the lines they print
//! (where `croupier server` and `croupier gateway` announce their addresses), and their CPU time
//! and resident memory from `/proc`.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Forwards every line `out` prints to the returned channel, from a thread, until it closes.
pub fn lines(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads `lines` until `done` says the process is ready, for at most `timeout`: `None` when it
/// exited or took longer. `done` sees every line and keeps what it needs.
pub fn wait_ready(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Option<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        if done(&line) {
            return Some(());
        }
    }
}

/// The URL a `croupier server` prints when it listens (`croupier server listening on URL`).
pub fn server_url(lines: &mpsc::Receiver<String>, timeout: Duration) -> Option<String> {
    server_urls(lines, timeout).map(|(url, _)| url)
}

/// Like [`server_url`], with the address of the server's metrics port (`host:port`) when it
/// announced one (the line before "listening").
pub fn server_urls(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
) -> Option<(String, Option<String>)> {
    let mut url = None;
    let mut metrics = None;
    wait_ready(lines, timeout, |line| {
        if let Some(m) = line.strip_prefix("croupier metrics on http://") {
            metrics = Some(m.trim_end_matches("/metrics").to_string());
        }
        url = line
            .strip_prefix("croupier server listening on ")
            .map(str::to_string);
        url.is_some()
    })?;
    Some((url?, metrics))
}

/// Resident memory of process `pid`, in MiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds (user + system) process `pid` has used so far (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Context switches (voluntary and not) of every live thread of process `pid`, from
/// `/proc/PID/task/*/status` (threads that ended no longer count).
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        total += status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_mib(pid).is_some_and(|m| m > 0.0));
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        assert!(context_switches(pid).is_some());
        assert_eq!(rss_mib(u32::MAX), None);
    }

    #[test]
    fn the_server_url_is_read_from_its_announcement() {
        let out: &[u8] = b"starting\ncroupier server listening on https://127.0.0.1:9\nmore\n";
        let rx = lines(out);
        assert_eq!(
            server_url(&rx, Duration::from_secs(5)).as_deref(),
            Some("https://127.0.0.1:9")
        );
        let rx = lines(&b"no announcement\n"[..]);
        assert_eq!(server_url(&rx, Duration::from_secs(5)), None);
    }
}
