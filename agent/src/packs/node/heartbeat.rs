//! The heartbeat summary: `cpu_percent` and `memory_percent` in every heartbeat's status, from a
//! sample of its own, refreshed at each heartbeat, so that `cpu_percent` is the average since
//! the previous one.

use std::collections::HashMap;

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use super::percent_of;

/// The sample behind the heartbeat's `cpu_percent` and `memory_percent`.
pub(super) struct Summary {
    /// None when sysinfo cannot read this system; the summary is then left out.
    sys: Option<System>,
}

impl Summary {
    pub(super) fn new() -> Summary {
        // Sampling now makes the first heartbeat's CPU figure the average since start-up.
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        if let Err(e) = &sys {
            tracing::warn!(error = %e, "no CPU and memory figures for heartbeats");
        }
        Summary { sys: sys.ok() }
    }

    /// Adds `cpu_percent` and `memory_percent` to a heartbeat's status.
    pub(super) fn add_to(&mut self, out: &mut HashMap<String, String>) {
        let Some(sys) = self.sys.as_mut() else {
            return;
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        out.insert(
            "cpu_percent".into(),
            format!("{:.1}", sys.global_cpu_usage()),
        );
        out.insert(
            "memory_percent".into(),
            format!("{:.1}", percent_of(sys.used_memory(), sys.total_memory())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packs::node::SAMPLE_GAP;

    #[test]
    fn heartbeat_summary_has_cpu_and_memory_percent() {
        let mut summary = Summary::new();
        std::thread::sleep(SAMPLE_GAP);
        let mut out = HashMap::new();
        summary.add_to(&mut out);
        for key in ["cpu_percent", "memory_percent"] {
            let v: f64 = out[key].parse().unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!((0.0..=100.0).contains(&v), "{key} = {v}");
        }
    }
}
