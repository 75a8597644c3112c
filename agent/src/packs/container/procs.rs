//! The processes of a `container.exec`, found through `/proc`, so that a cancelled exec can be
//! killed: Docker has no API to stop one exec. The exec's process (its host PID, as Docker
//! reports it) and every descendant are collected after checking that the process belongs to
//! the container's cgroup, so a recycled PID is never signalled.

use std::collections::HashMap;
use std::path::Path;

use rustix::process::{Pid, Signal, kill_process};

/// One process of an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    /// Its PID as the agent sees it (the host's, when the agent shares the daemon's PID
    /// namespace).
    pub pid: i32,
    /// Its PID inside the container (the last `NSpid` field), for `kill` run in the container.
    pub ns_pid: Option<i32>,
}

/// The process `pid` and its descendants under `proc_root` (`/proc`), when `pid` is in the
/// cgroup of `container_id`. Empty when the process is gone; an error when it exists but is not
/// the container's (another PID namespace, or a recycled PID).
pub(crate) fn tree(proc_root: &Path, container_id: &str, pid: i32) -> Result<Vec<Proc>, String> {
    let cgroup = match std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading the cgroup of process {pid}: {e}")),
    };
    if container_id.is_empty() || !cgroup.contains(container_id) {
        return Err(format!(
            "process {pid} is not in container {container_id}'s cgroup as seen from this agent \
             (the agent runs in another PID namespace than Docker)"
        ));
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let entries = std::fs::read_dir(proc_root)
        .map_err(|e| format!("listing {}: {e}", proc_root.display()))?;
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(parent) = parent_of(&entry.path()) {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if out.iter().any(|o: &Proc| o.pid == p) {
            continue;
        }
        out.push(Proc {
            pid: p,
            ns_pid: ns_pid(&proc_root.join(p.to_string())),
        });
        todo.extend(children.get(&p).into_iter().flatten());
    }
    Ok(out)
}

/// The parent PID from `<dir>/stat` ("pid (comm) state ppid …"; comm may hold spaces and
/// parentheses, so the fields are read after the last `)`).
fn parent_of(dir: &Path) -> Option<i32> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The last `NSpid` field of `<dir>/status`: the PID in the innermost namespace.
fn ns_pid(dir: &Path) -> Option<i32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Sends SIGKILL to each process; returns those that could not be signalled (not allowed).
/// A process that is already gone counts as killed.
pub(crate) fn kill(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .filter(|p| {
            let Some(pid) = Pid::from_raw(p.pid) else {
                return false;
            };
            !matches!(
                kill_process(pid, Signal::KILL),
                Ok(()) | Err(rustix::io::Errno::SRCH)
            )
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(root: &Path, pid: i32, ppid: i32, cgroup: &str, ns: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (odd) name) S {ppid} {pid} 0 0"),
        )
        .unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\tx\nNSpid:\t{pid}\t{ns}\n"),
        )
        .unwrap();
    }

    #[test]
    fn collects_the_tree_of_a_process_in_the_container_only() {
        let root = tempfile::tempdir().unwrap();
        let id = "c0ffee";
        let cg = format!("0::/system.slice/docker-{id}.scope\n");
        fake_proc(root.path(), 100, 1, &cg, "7");
        fake_proc(root.path(), 101, 100, &cg, "8");
        fake_proc(root.path(), 102, 101, &cg, "9");
        fake_proc(root.path(), 200, 1, "0::/user.slice\n", "200");
        std::fs::create_dir_all(root.path().join("self")).unwrap();
        let mut t = tree(root.path(), id, 100).unwrap();
        t.sort_by_key(|p| p.pid);
        assert_eq!(
            t,
            vec![
                Proc {
                    pid: 100,
                    ns_pid: Some(7)
                },
                Proc {
                    pid: 101,
                    ns_pid: Some(8)
                },
                Proc {
                    pid: 102,
                    ns_pid: Some(9)
                },
            ]
        );
        let e = tree(root.path(), id, 200).unwrap_err();
        assert!(e.contains("not in container"), "{e}");
        assert_eq!(tree(root.path(), id, 999).unwrap(), Vec::new(), "gone");
    }

    #[test]
    fn kill_signals_a_child_and_counts_a_gone_one_as_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let procs = [
            Proc {
                pid: child.id() as i32,
                ns_pid: None,
            },
            Proc {
                pid: i32::MAX,
                ns_pid: None,
            },
        ];
        assert!(kill(&procs).is_empty());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "SIGKILL");
    }
}
