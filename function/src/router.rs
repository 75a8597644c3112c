//! Routing modes over the candidates for a call (DESIGN §4). Pure functions over agent ids and
//! their load, so they are tested without a network.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use croupier_control::Load;

use crate::error::FunctionError;

/// How a call picks its agent(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Least busy: fewest calls in flight plus running jobs, then lowest CPU band (from the
    /// agents' heartbeats); ties broken round-robin. The default.
    LeastLoaded,
    /// Strict rotation per function.
    RoundRobin,
    /// Rendezvous hashing on the hash key.
    Hash,
    /// The named agent.
    Targeted,
    /// Every candidate.
    Broadcast,
}

impl Mode {
    /// Parses `InvokeOptions.routing_mode`.
    pub fn parse(s: &str) -> Result<Mode, FunctionError> {
        match s {
            "" | "lb" => Ok(Mode::LeastLoaded),
            "round_robin" | "rr" => Ok(Mode::RoundRobin),
            "hash" => Ok(Mode::Hash),
            "targeted" => Ok(Mode::Targeted),
            "broadcast" => Ok(Mode::Broadcast),
            other => Err(FunctionError::BadRequest(format!(
                "routing_mode {other:?} is unknown; use lb, round_robin, hash, targeted or broadcast"
            ))),
        }
    }
}

/// A candidate as the router sees it.
#[derive(Clone, Debug)]
pub struct Slot<'a> {
    /// Agent id.
    pub agent_id: &'a str,
    /// Its load: calls in flight, running jobs and CPU use.
    pub load: Load,
}

/// How busy a candidate is, for least-loaded routing: first the work outstanding on it (calls
/// in flight and running jobs), then its CPU use in 10-point bands, so that agents of about
/// the same CPU use still share the work. An agent that reports no CPU use counts as half busy.
fn busyness(load: &Load) -> (i64, i64) {
    let band = load
        .cpu_percent
        .map_or(5, |c| (c.clamp(0.0, 100.0) / 10.0) as i64);
    (load.in_flight + load.jobs, band)
}

/// Rotation counters, per function.
#[derive(Default)]
pub struct Rotation {
    global: AtomicUsize,
    per_function: Mutex<HashMap<String, usize>>,
}

impl Rotation {
    /// Picks the least busy candidate (fewest calls and jobs outstanding, then the lower CPU
    /// band); among equals, rotates.
    pub fn least_loaded(&self, slots: &[Slot<'_>]) -> Option<usize> {
        let min = slots.iter().map(|s| busyness(&s.load)).min()?;
        let ties: Vec<usize> = (0..slots.len())
            .filter(|&i| busyness(&slots[i].load) == min)
            .collect();
        let n = self.global.fetch_add(1, Ordering::Relaxed);
        Some(ties[n % ties.len()])
    }

    /// Picks the next candidate for `function` in rotation.
    pub fn round_robin(&self, function: &str, slots: &[Slot<'_>]) -> Option<usize> {
        if slots.is_empty() {
            return None;
        }
        let mut map = self.per_function.lock();
        if map.len() > 100_000 {
            map.clear();
        }
        let n = map.entry(function.to_string()).or_insert(0);
        let pick = *n % slots.len();
        *n = n.wrapping_add(1);
        Some(pick)
    }
}

/// Rendezvous (highest random weight) hashing: the agent with the highest score for the key
/// wins, so a key keeps its agent while the set is unchanged and only keys of a removed agent
/// move. The hash is FNV-1a mixed with splitmix64: stable across processes and versions.
pub fn rendezvous(key: &str, slots: &[Slot<'_>]) -> Option<usize> {
    (0..slots.len()).max_by_key(|&i| (score(key, slots[i].agent_id), slots[i].agent_id))
}

fn score(key: &str, agent: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(agent.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finaliser: spreads FNV's weak low bits.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots<'a>(ids: &[&'a str]) -> Vec<Slot<'a>> {
        ids.iter()
            .map(|id| Slot {
                agent_id: id,
                load: Load::default(),
            })
            .collect()
    }

    #[test]
    fn hash_keeps_keys_and_moves_only_the_removed_agents_keys() {
        let all = slots(&["a1", "a2", "a3", "a4"]);
        let fewer = slots(&["a1", "a2", "a4"]);
        let mut moved_from_others = 0;
        let mut counts = HashMap::new();
        for k in 0..2000 {
            let key = format!("player-{k}");
            let before = all[rendezvous(&key, &all).unwrap()].agent_id;
            *counts.entry(before).or_insert(0) += 1;
            assert_eq!(before, all[rendezvous(&key, &all).unwrap()].agent_id);
            let after = fewer[rendezvous(&key, &fewer).unwrap()].agent_id;
            if before != "a3" && before != after {
                moved_from_others += 1;
            }
        }
        assert_eq!(moved_from_others, 0);
        // Roughly even spread: every agent gets at least 15% of 2000 keys.
        assert!(counts.values().all(|&c| c > 300), "{counts:?}");
    }

    fn slot(agent_id: &str, in_flight: i64, jobs: i64, cpu: Option<f32>) -> Slot<'_> {
        Slot {
            agent_id,
            load: Load {
                in_flight,
                jobs,
                cpu_percent: cpu,
            },
        }
    }

    #[test]
    fn least_loaded_prefers_idle_and_rotates_ties() {
        let r = Rotation::default();
        let s = vec![
            slot("a1", 3, 0, None),
            slot("a2", 0, 0, None),
            slot("a3", 0, 0, None),
        ];
        let picks: Vec<usize> = (0..4).map(|_| r.least_loaded(&s).unwrap()).collect();
        assert!(picks.iter().all(|&p| p == 1 || p == 2));
        assert!(picks.contains(&1) && picks.contains(&2));
    }

    #[test]
    fn least_loaded_counts_running_jobs_then_cpu() {
        let r = Rotation::default();
        // Two running jobs weigh more than one call in flight.
        let s = vec![slot("a1", 0, 2, Some(5.0)), slot("a2", 1, 0, Some(5.0))];
        assert!((0..4).all(|_| r.least_loaded(&s) == Some(1)));
        // Equal work: the lower CPU band wins; an agent without a figure counts as 50 %.
        let s = vec![
            slot("a1", 1, 0, Some(91.0)),
            slot("a2", 1, 0, Some(12.5)),
            slot("a3", 1, 0, None),
        ];
        assert!((0..4).all(|_| r.least_loaded(&s) == Some(1)));
        let s = vec![slot("a1", 0, 0, Some(91.0)), slot("a3", 0, 0, None)];
        assert!((0..4).all(|_| r.least_loaded(&s) == Some(1)));
        // The same band still rotates.
        let s = vec![slot("a1", 0, 0, Some(21.0)), slot("a2", 0, 0, Some(28.9))];
        let picks: Vec<usize> = (0..4).map(|_| r.least_loaded(&s).unwrap()).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn round_robin_cycles_per_function() {
        let r = Rotation::default();
        let s = slots(&["a1", "a2", "a3"]);
        let picks: Vec<usize> = (0..6).map(|_| r.round_robin("f", &s).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(r.round_robin("g", &s), Some(0));
    }

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::parse("").unwrap(), Mode::LeastLoaded);
        assert_eq!(Mode::parse("broadcast").unwrap(), Mode::Broadcast);
        assert!(
            Mode::parse("nearest")
                .unwrap_err()
                .to_string()
                .contains("nearest")
        );
    }
}
