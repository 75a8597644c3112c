//! Per-function call statistics for people (`GetFunctionStats`, `croupier stats`), like NATS
//! micro's `STATS`: calls, errors, the last error, success rate, p50/p99 latency and rate, since
//! the server started and over the last minute, and each agent's part.
//!
//! Only functions the registry knows are kept (as for the metrics' labels), so callers naming
//! functions that do not exist cannot grow the table. Memory per function: two latency
//! histograms at two significant figures (one since start, one per 10-second slot of the last
//! minute, six slots) and a few counters per agent.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use croupier_proto::function::v1 as pb;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Width of one slot of the last-minute window.
const SLOT: Duration = Duration::from_secs(10);
/// Slots in the window.
const SLOTS: usize = 6;
/// Longest latency a histogram holds, microseconds (longer calls are counted at this value).
const MAX_MICROS: u64 = 3_600_000_000;

/// An entry's game, env and function, each followed by U+001F.
type Key = String;

/// Counts and a latency histogram.
#[derive(Clone)]
struct Window {
    calls: u64,
    errors: u64,
    micros: Histogram<u64>,
}

impl Window {
    fn new() -> Window {
        Window {
            calls: 0,
            errors: 0,
            // Bounds and precision are constants that Histogram accepts.
            micros: Histogram::new_with_bounds(1, MAX_MICROS, 2).unwrap_or_else(|_| {
                Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant figures"))
            }),
        }
    }

    fn record(&mut self, ok: bool, took: Duration) {
        self.calls += 1;
        if !ok {
            self.errors += 1;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(MAX_MICROS);
        self.micros.saturating_record(us.clamp(1, MAX_MICROS));
    }

    fn to_proto(&self, seconds: f64) -> pb::StatsWindow {
        let ms = |q: f64| {
            if self.calls == 0 {
                0.0
            } else {
                self.micros.value_at_quantile(q) as f64 / 1000.0
            }
        };
        pb::StatsWindow {
            calls: self.calls,
            errors: self.errors,
            success_rate: if self.calls == 0 {
                1.0
            } else {
                (self.calls - self.errors) as f64 / self.calls as f64
            },
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            rate_per_sec: if seconds > 0.0 {
                self.calls as f64 / seconds
            } else {
                0.0
            },
        }
    }
}

/// One agent's counts.
#[derive(Default)]
struct AgentCounts {
    calls: u64,
    errors: u64,
    last_error: String,
}

/// One function's statistics.
struct Entry {
    game: String,
    env: String,
    function: String,
    total: Window,
    /// (slot number, window) for the last [`SLOTS`] slots.
    slots: Vec<(u64, Window)>,
    last_error: String,
    last_error_at: i64,
    agents: BTreeMap<String, AgentCounts>,
}

impl Entry {
    fn new(game: &str, env: &str, function: &str) -> Entry {
        Entry {
            game: game.to_string(),
            env: env.to_string(),
            function: function.to_string(),
            total: Window::new(),
            slots: Vec::with_capacity(SLOTS),
            last_error: String::new(),
            last_error_at: 0,
            agents: BTreeMap::new(),
        }
    }

    fn record(&mut self, slot: u64, ok: bool, outcome: &Outcome<'_>) {
        self.total.record(ok, outcome.took);
        match self.slots.iter_mut().find(|(n, _)| *n == slot) {
            Some((_, w)) => w.record(ok, outcome.took),
            None => {
                self.slots.retain(|(n, _)| *n + SLOTS as u64 > slot);
                let mut w = Window::new();
                w.record(ok, outcome.took);
                self.slots.push((slot, w));
            }
        }
        let error = outcome
            .error
            .map(|(code, message)| format!("{code}: {message}"));
        if let Some(err) = &error {
            self.last_error.clone_from(err);
            self.last_error_at = croupier_registry::model::now_ms();
        }
        if !outcome.agent.is_empty() {
            let a = match self.agents.get_mut(outcome.agent) {
                Some(a) => a,
                None => self.agents.entry(outcome.agent.to_string()).or_default(),
            };
            a.calls += 1;
            if let Some(err) = error {
                a.errors += 1;
                a.last_error = err;
            }
        }
    }
}

thread_local! {
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The statistics of every function this server routed calls to.
pub struct FunctionStats {
    started: Instant,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Default for FunctionStats {
    fn default() -> Self {
        FunctionStats::new()
    }
}

/// What one call's outcome was, for [`FunctionStats::record`].
pub struct Outcome<'a> {
    /// The agent that answered ("" when none did).
    pub agent: &'a str,
    /// None when the call worked; else the error code and message.
    pub error: Option<(&'a str, &'a str)>,
    /// How long it took.
    pub took: Duration,
}

impl FunctionStats {
    /// Empty statistics; the clock starts now.
    pub fn new() -> FunctionStats {
        FunctionStats {
            started: Instant::now(),
            entries: Mutex::default(),
        }
    }

    fn slot_now(&self) -> u64 {
        (self.started.elapsed().as_secs() / SLOT.as_secs()) + 1
    }

    /// Records a call of a function the registry knows.
    pub fn record(&self, game: &str, env: &str, function: &str, outcome: &Outcome<'_>) {
        let slot = self.slot_now();
        let ok = outcome.error.is_none();
        let mut entries = self.entries.lock();
        // Found by the joined names in a reused buffer: no allocation once the entry exists.
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            key.clear();
            for part in [game, env, function] {
                key.push_str(part);
                key.push('\u{1f}');
            }
            if let Some(e) = entries.get_mut(key.as_str()) {
                e.record(slot, ok, outcome);
            } else {
                let mut e = Entry::new(game, env, function);
                e.record(slot, ok, outcome);
                entries.insert(key.clone(), e);
            }
        });
    }

    /// The statistics of the functions `keep` accepts (game, env, function), sorted.
    pub fn snapshot(&self, keep: impl Fn(&str, &str, &str) -> bool) -> Vec<pb::FunctionStats> {
        let slot = self.slot_now();
        let since_start = self.started.elapsed().as_secs_f64();
        // The window spans the full slots before the current one and the current one so far.
        let window_secs = since_start
            .min(((SLOTS - 1) as f64) * SLOT.as_secs_f64() + since_start % SLOT.as_secs_f64());
        let entries = self.entries.lock();
        let mut out: Vec<pb::FunctionStats> = entries
            .values()
            .filter(|entry| keep(&entry.game, &entry.env, &entry.function))
            .map(|entry| {
                let mut minute = Window::new();
                for (n, w) in &entry.slots {
                    if *n + SLOTS as u64 > slot {
                        minute.calls += w.calls;
                        minute.errors += w.errors;
                        let _ = minute.micros.add(&w.micros);
                    }
                }
                pb::FunctionStats {
                    game_id: entry.game.clone(),
                    env: entry.env.clone(),
                    function_id: entry.function.clone(),
                    total: Some(entry.total.to_proto(since_start)),
                    last_minute: Some(minute.to_proto(window_secs)),
                    last_error: entry.last_error.clone(),
                    last_error_at: entry.last_error_at,
                    agents: entry
                        .agents
                        .iter()
                        .map(|(id, a)| pb::AgentStats {
                            agent_id: id.clone(),
                            calls: a.calls,
                            errors: a.errors,
                            last_error: a.last_error.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.game_id, &a.env, &a.function_id).cmp(&(&b.game_id, &b.env, &b.function_id))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_latency_and_agents() {
        let s = FunctionStats::new();
        for i in 0..99 {
            s.record(
                "g",
                "e",
                "f",
                &Outcome {
                    agent: if i % 2 == 0 { "a1" } else { "a2" },
                    error: None,
                    took: Duration::from_millis(2),
                },
            );
        }
        s.record(
            "g",
            "e",
            "f",
            &Outcome {
                agent: "a2",
                error: Some(("TIMEOUT", "too slow")),
                took: Duration::from_millis(900),
            },
        );
        s.record(
            "g",
            "e",
            "other",
            &Outcome {
                agent: "",
                error: Some(("NO_AGENT", "none")),
                took: Duration::from_millis(1),
            },
        );
        let all = s.snapshot(|_, _, _| true);
        assert_eq!(all.len(), 2);
        let f = &all[0];
        assert_eq!(f.function_id, "f");
        let total = f.total.as_ref().unwrap();
        assert_eq!((total.calls, total.errors), (100, 1));
        assert!((total.success_rate - 0.99).abs() < 1e-9);
        assert!((1.9..=2.1).contains(&total.p50_ms), "{}", total.p50_ms);
        assert!(total.p99_ms >= 1.9, "{}", total.p99_ms);
        assert_eq!(f.last_minute.as_ref().unwrap().calls, 100);
        assert_eq!(f.last_error, "TIMEOUT: too slow");
        assert!(f.last_error_at > 0);
        let agents: Vec<(&str, u64, u64)> = f
            .agents
            .iter()
            .map(|a| (a.agent_id.as_str(), a.calls, a.errors))
            .collect();
        assert_eq!(agents, [("a1", 50, 0), ("a2", 50, 1)]);
        // The filter applies; a function without agent answers lists none.
        let other = s.snapshot(|_, _, f| f == "other");
        assert_eq!(other.len(), 1);
        assert!(other[0].agents.is_empty());
    }
}
