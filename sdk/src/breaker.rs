//! The per-server circuit breaker of a [`Client`](crate::Client).
//!
//! It watches whether the server can be reached at all:
//!
//! - **Closed** (normal): every call goes through. A call that could not reach the server (the
//!   connection failed or broke: a transport-level `UNAVAILABLE`) counts as a failure; any
//!   answer from the server, errors included, resets the count. After
//!   [`BreakerPolicy::failure_threshold`] failures in a row the breaker opens.
//! - **Open**: for [`BreakerPolicy::open_for`], calls fail at once with `UNAVAILABLE`
//!   "circuit open for … until …", without touching the network.
//! - **Half-open**: once the interval is over, up to [`BreakerPolicy::half_open_probes`] calls go
//!   through as probes (others still fail fast). A probe that reaches the server closes the
//!   breaker; one that fails opens it for another interval.
//!
//! An `UNAVAILABLE` *answered by the server* (no usable agent, an agent lost mid-call, a store
//! hiccup) does not count: the server is up, and one function without agents must not cut a
//! client off from every other function. Those answers are the retry rule's business
//! ([`crate::retry`]). A call that ran out of its own deadline is neutral.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tonic::Status;

use crate::retry::{Failure, mark};

/// When the breaker opens and for how long. Defaults: 5 failures, 30 s, 1 probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures to reach the server that open the breaker; 0 never opens it.
    /// Default 5.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets probes through. Default 30 s.
    pub open_for: Duration,
    /// Calls let through at once while half-open. Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

impl BreakerPolicy {
    /// A breaker that never opens.
    pub fn disabled() -> Self {
        BreakerPolicy {
            failure_threshold: 0,
            ..BreakerPolicy::default()
        }
    }

    /// Sets the number of consecutive failures that open the breaker.
    pub fn with_failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// Sets how long the breaker stays open.
    pub fn with_open_for(mut self, open_for: Duration) -> Self {
        self.open_for = open_for;
        self
    }

    /// Sets how many probe calls go through at once while half-open (at least 1).
    pub fn with_half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.max(1);
        self
    }
}

/// The breaker's state, as reported by [`Client::breaker_state`](crate::Client::breaker_state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; this many consecutive failures to reach the server so far.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls fail fast until `until`.
    Open {
        /// When probes are let through again.
        until: Instant,
    },
    /// Probe calls go through; this many are in flight.
    HalfOpen {
        /// Probes in flight.
        probes: u32,
    },
}

/// What one call told the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The server answered (success or not).
    Reached,
    /// The server could not be reached; the message says why.
    Unreachable(String),
    /// Nothing learned (the call's own deadline passed, or it was dropped).
    Neutral,
}

impl Outcome {
    /// What a call's result says about the server.
    pub(crate) fn of<T>(result: &Result<T, Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Reached,
            Err(s) => match Failure::of(s) {
                Failure::NotSent | Failure::Broken => Outcome::Unreachable(s.message().into()),
                Failure::LocalDeadline | Failure::CircuitOpen => Outcome::Neutral,
                Failure::Answered => Outcome::Reached,
            },
        }
    }
}

struct Inner {
    state: BreakerState,
    last_error: String,
}

/// A circuit breaker for one server, shared by a client and its clones.
pub(crate) struct CircuitBreaker {
    server: String,
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub(crate) fn new(server: &str, policy: BreakerPolicy) -> Arc<Self> {
        Arc::new(CircuitBreaker {
            server: server.to_string(),
            policy,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed { failures: 0 },
                last_error: String::new(),
            }),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// The current state (an open breaker whose interval is over reports half-open).
    pub(crate) fn state(&self) -> BreakerState {
        match self.lock().state {
            BreakerState::Open { until } if Instant::now() >= until => {
                BreakerState::HalfOpen { probes: 0 }
            }
            s => s,
        }
    }

    /// Lets one call through, or fails fast with `UNAVAILABLE` while open (or while half-open
    /// with every probe slot taken).
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<Permit, Status> {
        let mut inner = self.lock();
        if let BreakerState::Open { until } = inner.state {
            if Instant::now() < until {
                return Err(self.open_error(until, &inner.last_error));
            }
            inner.state = BreakerState::HalfOpen { probes: 0 };
        }
        let probe = match &mut inner.state {
            BreakerState::Closed { .. } => false,
            BreakerState::HalfOpen { probes } if *probes < self.policy.half_open_probes.max(1) => {
                *probes += 1;
                true
            }
            BreakerState::HalfOpen { .. } => {
                return Err(mark(
                    Status::unavailable(format!(
                        "circuit half-open for {}: waiting for a probe call to reach it \
                         (last failure: {}); failing fast",
                        self.server, inner.last_error
                    )),
                    Failure::CircuitOpen,
                ));
            }
            BreakerState::Open { .. } => unreachable!("handled above"),
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        })
    }

    fn open_error(&self, until: Instant, last: &str) -> Status {
        let left = until.saturating_duration_since(Instant::now());
        let at = humantime::format_rfc3339_seconds(SystemTime::now() + left);
        mark(
            Status::unavailable(format!(
                "circuit open for {} until {at} (in {:.1} s) after {} consecutive failures to \
                 reach it (last: {last}); failing fast",
                self.server,
                left.as_secs_f64(),
                self.policy.failure_threshold
            )),
            Failure::CircuitOpen,
        )
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        let mut inner = self.lock();
        match outcome {
            Outcome::Reached => inner.state = BreakerState::Closed { failures: 0 },
            Outcome::Neutral => {
                if let (true, BreakerState::HalfOpen { probes }) = (probe, &mut inner.state) {
                    *probes = probes.saturating_sub(1);
                }
            }
            Outcome::Unreachable(why) => {
                inner.last_error = why;
                let open = BreakerState::Open {
                    until: Instant::now() + self.policy.open_for,
                };
                match &mut inner.state {
                    BreakerState::Closed { failures } => {
                        *failures += 1;
                        if self.policy.failure_threshold > 0
                            && *failures >= self.policy.failure_threshold
                        {
                            tracing::warn!(server = %self.server, failures = *failures, open_for = ?self.policy.open_for, "circuit opened");
                            inner.state = open;
                        }
                    }
                    BreakerState::HalfOpen { .. } if probe => {
                        tracing::warn!(server = %self.server, open_for = ?self.policy.open_for, "probe failed; circuit opened again");
                        inner.state = open;
                    }
                    // A call let through before the breaker opened, failing late: already open.
                    BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => {}
                }
            }
        }
    }
}

/// One call let through by the breaker. Dropped without [`Permit::record`] (the caller gave
/// up), it counts as neutral.
pub(crate) struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl Permit {
    /// Reports the call's outcome.
    pub(crate) fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.probe, Outcome::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn breaker(threshold: u32, probes: u32) -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "https://s1:8443",
            BreakerPolicy::default()
                .with_failure_threshold(threshold)
                .with_open_for(Duration::from_secs(30))
                .with_half_open_probes(probes),
        )
    }

    fn fail(b: &Arc<CircuitBreaker>) {
        b.acquire()
            .unwrap()
            .record(Outcome::Unreachable("tcp connect error".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_fails_fast() {
        let b = breaker(3, 1);
        fail(&b);
        fail(&b);
        // An answer from the server resets the count.
        b.acquire().unwrap().record(Outcome::Reached);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        fail(&b);
        let BreakerState::Open { until } = b.state() else {
            panic!("open after 3 failures: {:?}", b.state())
        };
        assert_eq!(until, Instant::now() + Duration::from_secs(30));

        let err = b.acquire().err().expect("fails fast while open");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message()
                .starts_with("circuit open for https://s1:8443 until "),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("tcp connect error"),
            "{}",
            err.message()
        );
        assert_eq!(Failure::of(&err), Failure::CircuitOpen);

        // Still open just before the interval ends.
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_probes_through_and_closes_on_success() {
        let b = breaker(1, 1);
        fail(&b);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen { probes: 0 });
        let probe = b.acquire().expect("one probe goes through");
        assert_eq!(b.state(), BreakerState::HalfOpen { probes: 1 });
        let err = b
            .acquire()
            .err()
            .expect("a second call waits for the probe");
        assert!(err.message().contains("half-open"), "{}", err.message());
        probe.record(Outcome::Reached);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert!(b.acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_for_a_full_interval() {
        let b = breaker(2, 2);
        fail(&b);
        fail(&b);
        tokio::time::advance(Duration::from_secs(31)).await;
        let p1 = b.acquire().unwrap();
        let p2 = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "two probes at most");
        p1.record(Outcome::Unreachable("connection refused".into()));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Instant::now() + Duration::from_secs(30)
            }
        );
        // The other probe failing late changes nothing; reaching the server closes it.
        p2.record(Outcome::Reached);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_outcomes_and_dropped_probes_free_the_slot() {
        let b = breaker(1, 1);
        fail(&b);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(b.acquire().unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen { probes: 0 });
        b.acquire().unwrap().record(Outcome::Neutral);
        assert_eq!(b.state(), BreakerState::HalfOpen { probes: 0 });
        b.acquire().unwrap().record(Outcome::Reached);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_opens() {
        let b = CircuitBreaker::new("s", BreakerPolicy::disabled());
        for _ in 0..100 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed { failures: 100 });
    }

    #[test]
    fn outcomes_follow_the_failure_classes() {
        let answered: Result<(), Status> = Err(Status::unavailable("no agent provides f"));
        assert_eq!(Outcome::of(&answered), Outcome::Reached);
        let refused: Result<(), Status> = Err(mark(
            Status::unavailable("cannot reach s: connection refused"),
            Failure::NotSent,
        ));
        assert!(matches!(Outcome::of(&refused), Outcome::Unreachable(_)));
        let late: Result<(), Status> = Err(mark(
            Status::deadline_exceeded("no answer"),
            Failure::LocalDeadline,
        ));
        assert_eq!(Outcome::of(&late), Outcome::Neutral);
        assert_eq!(Outcome::of(&Ok::<(), Status>(())), Outcome::Reached);
    }
}
