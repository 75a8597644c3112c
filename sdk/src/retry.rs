//! Retries of calls that are safe to repeat, and the classification of failures they rely on.
//!
//! **The rule.** A failed call is tried again, with exponential backoff (100 ms doubling to
//! 30 s, ±20 % jitter; at most [`RetryPolicy::max_attempts`] attempts in all, and never past the
//! call's deadline), when:
//!
//! - the server was never reached (the connection could not be made): nothing was sent, so any
//!   call may be repeated; or
//! - it failed with `UNAVAILABLE` (the server answered that no agent could take it, an agent was
//!   lost mid-call, or the connection broke after the request left) **and** the call is safe to
//!   repeat:
//!   - it carries an idempotency key (the server runs a key once and answers repeats with the
//!     first outcome), or
//!   - the function's descriptor says `semantics.kind = "query"` or `semantics.idempotent`
//!     (the client learns this from `GetRegistrations` and caches it for a minute), or
//!   - the function is listed in [`RetryPolicy::safe_functions`]; or
//!   - the call is a read of the registry or of jobs, or a cancel (always safe).
//!
//! Nothing else is retried: a handler that answered (even with `success=false`), a deadline, a
//! permission or validation error, or a call failed fast by the open
//! [circuit breaker](crate::breaker). Starting a job follows the invocation rule: with a key,
//! the same key returns the same job.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::codegen::{Service, http};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::backoff::Backoff;
use crate::breaker::{CircuitBreaker, Outcome};
use crate::tls::error_chain;

/// How a client retries calls that are safe to repeat (see the [module docs](self) for which
/// those are). Defaults from the game-node design: at most 5 attempts, backoff 100 ms → 30 s
/// (×2), ±20 % jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 never retries. Default 5.
    pub max_attempts: u32,
    /// Delay before the first retry. Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest delay between attempts. Default 30 s.
    pub max_backoff: Duration,
    /// Random variation of each delay (0.2 = ±20 %). Default 0.2.
    pub jitter: f64,
    /// Functions the caller declares safe to repeat whatever their descriptor says. Default
    /// empty.
    pub safe_functions: BTreeSet<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
            safe_functions: BTreeSet::new(),
        }
    }
}

impl RetryPolicy {
    /// Never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Sets the number of attempts in all (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first delay and the longest delay.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the jitter (0.0–1.0).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Declares `function_id` safe to repeat (a query or an idempotent command whose descriptor
    /// does not say so).
    pub fn safe_to_retry(mut self, function_id: impl Into<String>) -> Self {
        self.safe_functions.insert(function_id.into());
        self
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff, self.jitter)
    }
}

/// Metadata key on statuses the client made itself, saying which [`Failure`] it was.
const FAILURE_KEY: &str = "x-croupier-sdk-failure";

/// Where a failed call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server answered with this status.
    Answered,
    /// The connection could not be made: nothing was sent.
    NotSent,
    /// The connection broke: the request may or may not have reached the server.
    Broken,
    /// The call's own deadline passed before any answer.
    LocalDeadline,
    /// The circuit breaker refused the call.
    CircuitOpen,
}

impl Failure {
    fn tag(self) -> &'static str {
        match self {
            Failure::Answered => "answered",
            Failure::NotSent => "not-sent",
            Failure::Broken => "broken",
            Failure::LocalDeadline => "deadline",
            Failure::CircuitOpen => "circuit-open",
        }
    }

    /// The class of a status: the client's own mark, or [`Failure::Answered`].
    pub(crate) fn of(status: &Status) -> Failure {
        match status
            .metadata()
            .get(FAILURE_KEY)
            .and_then(|v| v.to_str().ok())
        {
            Some("not-sent") => Failure::NotSent,
            Some("broken") => Failure::Broken,
            Some("deadline") => Failure::LocalDeadline,
            Some("circuit-open") => Failure::CircuitOpen,
            _ => Failure::Answered,
        }
    }
}

/// Whether `status` is the client's own account of a transport failure (the server was never
/// reached, or the connection broke), as opposed to an answer from the server.
pub fn is_transport_failure(status: &Status) -> bool {
    matches!(
        Failure::of(status),
        Failure::NotSent | Failure::Broken | Failure::CircuitOpen
    )
}

/// Marks a status the client made itself with its failure class.
pub(crate) fn mark(mut status: Status, failure: Failure) -> Status {
    status
        .metadata_mut()
        .insert(FAILURE_KEY, MetadataValue::from_static(failure.tag()));
    status
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Try again: nothing reached the server.
    Retry,
    /// Try again only if the call is safe to repeat.
    RetryIfSafe,
    /// Give up.
    Stop,
}

/// The retry rule for one failure.
pub(crate) fn decide(status: &Status) -> Decision {
    match (Failure::of(status), status.code()) {
        // A certificate the other side refuses (expired, foreign CA, wrong name) is refused
        // again on every retry: say so at once.
        (Failure::NotSent | Failure::Broken, _) if certificate_refused(status.message()) => {
            Decision::Stop
        }
        (Failure::NotSent, _) => Decision::Retry,
        (Failure::Answered | Failure::Broken, Code::Unavailable) => Decision::RetryIfSafe,
        _ => Decision::Stop,
    }
}

/// Whether a transport failure is a TLS certificate refusal (rustls's wording, either side). A
/// fatal alert from the server is one too: in TLS 1.3 the server's refusal of the client
/// certificate (`DecryptError` for a foreign CA's signature, `BadCertificate`,
/// `CertificateExpired`, `UnknownCA`…) arrives as an alert on the first call after the client's
/// handshake, and the same certificate gets the same alert on every retry.
fn certificate_refused(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "received fatal alert",
        "certificate",
        "unknownca",
        "unknown ca",
        "unknownissuer",
        "notvalidforname",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Runs `attempt` until it succeeds or the rule, the attempts, the deadline or the breaker say
/// stop. `attempt` gets the time left until `deadline`; `safe` (awaited at most once, and only
/// when needed) says whether the call may be repeated.
pub(crate) async fn with_retries<T, F, Fut, S>(
    policy: &RetryPolicy,
    breaker: &Arc<CircuitBreaker>,
    deadline: Instant,
    what: &str,
    safe: S,
    mut attempt: F,
) -> Result<T, Status>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
    S: Future<Output = bool>,
{
    let mut safe = Some(safe);
    let mut known_safe = None;
    let mut backoff = policy.backoff();
    let mut attempts = 0;
    loop {
        let permit = breaker.acquire()?;
        attempts += 1;
        let result = attempt(deadline.saturating_duration_since(Instant::now())).await;
        permit.record(Outcome::of(&result));
        let status = match result {
            Ok(v) => return Ok(v),
            Err(s) => s,
        };
        if attempts >= policy.max_attempts.max(1) {
            return Err(status);
        }
        let retry = match decide(&status) {
            Decision::Retry => true,
            Decision::RetryIfSafe => match (known_safe, safe.take()) {
                (Some(k), _) => k,
                (None, Some(fut)) => *known_safe.insert(fut.await),
                (None, None) => false,
            },
            Decision::Stop => false,
        };
        if !retry {
            return Err(status);
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Err(status);
        }
        tracing::debug!(call = %what, attempt = attempts, code = ?status.code(), message = %status.message(), delay = ?delay, "retrying");
        tokio::time::sleep(delay).await;
    }
}

/// The channel under the generated clients: turns transport failures into marked statuses, so
/// the retry rule and the breaker can tell "never sent" and "connection broke" from an answer.
#[derive(Clone, Debug)]
pub(crate) struct Marked {
    inner: Channel,
    server: Arc<str>,
}

impl Marked {
    pub(crate) fn new(inner: Channel, server: Arc<str>) -> Self {
        Marked { inner, server }
    }
}

impl Service<http::Request<tonic::body::Body>> for Marked {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Service::poll_ready(&mut self.inner, cx).map_err(|e| transport_status(&self.server, &e))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = Service::call(&mut self.inner, req);
        let server = self.server.clone();
        Box::pin(async move { fut.await.map_err(|e| transport_status(&server, &e)) })
    }
}

/// The status for a transport failure: the call's deadline passed, the connection could not be
/// made, or it broke.
fn transport_status(server: &str, err: &(dyn StdError + 'static)) -> Status {
    let mut cur = Some(err);
    let (mut timeout, mut connect) = (false, false);
    while let Some(e) = cur {
        timeout |= e.is::<tonic::TimeoutExpired>();
        connect |= e.is::<tonic::ConnectError>();
        cur = e.source();
    }
    if timeout {
        mark(
            Status::deadline_exceeded(format!(
                "{server} did not answer before the call's deadline"
            )),
            Failure::LocalDeadline,
        )
    } else if connect {
        mark(
            Status::unavailable(format!("cannot reach {server}: {}", error_chain(err))),
            Failure::NotSent,
        )
    } else {
        mark(
            Status::unavailable(format!(
                "connection to {server} failed: {}",
                error_chain(err)
            )),
            Failure::Broken,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::breaker::{BreakerPolicy, BreakerState};

    fn no_agent() -> Status {
        Status::unavailable("no agent provides agent.ping")
    }

    fn refused() -> Status {
        mark(
            Status::unavailable("cannot reach s: connection refused"),
            Failure::NotSent,
        )
    }

    /// Runs `with_retries` over scripted outcomes; returns the result, the attempt times (ms
    /// since start) and whether `safe` was consulted.
    async fn run(
        policy: RetryPolicy,
        breaker: BreakerPolicy,
        deadline: Duration,
        safe: bool,
        script: Vec<Result<&'static str, Status>>,
    ) -> (Result<&'static str, Status>, Vec<u128>, bool) {
        let breaker = CircuitBreaker::new("s", breaker);
        let start = Instant::now();
        let script = Mutex::new(script.into_iter());
        let times = Mutex::new(Vec::new());
        let consulted = Mutex::new(false);
        let out = with_retries(
            &policy,
            &breaker,
            start + deadline,
            "test",
            async {
                *consulted.lock().unwrap() = true;
                safe
            },
            |_left| {
                times.lock().unwrap().push(start.elapsed().as_millis());
                let next = script.lock().unwrap().next().expect("script too short");
                async move { next }
            },
        )
        .await;
        (
            out,
            times.into_inner().unwrap(),
            consulted.into_inner().unwrap(),
        )
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn transport_failures_are_told_from_answers() {
        assert!(is_transport_failure(&refused()));
        assert!(is_transport_failure(&mark(
            Status::unavailable("reset"),
            Failure::Broken
        )));
        assert!(!is_transport_failure(&no_agent()));
    }

    #[test]
    fn the_rule() {
        assert_eq!(decide(&refused()), Decision::Retry);
        assert_eq!(decide(&no_agent()), Decision::RetryIfSafe);
        let broken = mark(Status::unavailable("connection reset"), Failure::Broken);
        assert_eq!(decide(&broken), Decision::RetryIfSafe);
        for s in [
            Status::invalid_argument("at /ms: not an integer"),
            Status::deadline_exceeded("agent a1 did not answer"),
            Status::not_found("no such function"),
            Status::resource_exhausted("too many calls"),
            mark(Status::deadline_exceeded("late"), Failure::LocalDeadline),
            mark(Status::unavailable("circuit open"), Failure::CircuitOpen),
            mark(
                Status::unavailable("cannot reach https://x: invalid peer certificate: Expired"),
                Failure::NotSent,
            ),
            mark(
                Status::unavailable(
                    "connection to https://x failed: received fatal alert: UnknownCA",
                ),
                Failure::Broken,
            ),
            // TLS 1.3: a client certificate from a foreign CA, refused after the handshake.
            mark(
                Status::unavailable(
                    "connection to https://x failed: transport error: connection error: \
                     received fatal alert: DecryptError",
                ),
                Failure::Broken,
            ),
        ] {
            assert_eq!(decide(&s), Decision::Stop, "{s:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn safe_calls_back_off_exponentially_up_to_max_attempts() {
        let script = (0..5).map(|_| Err(no_agent())).collect();
        let (out, times, consulted) = run(
            RetryPolicy::default(),
            BreakerPolicy::default(),
            LONG,
            true,
            script,
        )
        .await;
        assert_eq!(out.unwrap_err().message(), "no agent provides agent.ping");
        assert!(consulted);
        assert_eq!(times.len(), 5, "5 attempts: {times:?}");
        // Gaps of 100, 200, 400, 800 ms, each ±20 %.
        for (i, base) in [100u128, 200, 400, 800].into_iter().enumerate() {
            let gap = times[i + 1] - times[i];
            assert!(
                gap * 10 >= base * 8 && gap * 10 <= base * 12,
                "gap {i} = {gap} ms, expected {base} ±20 %: {times:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unsafe_calls_fail_at_once() {
        let (out, times, consulted) = run(
            RetryPolicy::default(),
            BreakerPolicy::default(),
            LONG,
            false,
            vec![Err(no_agent())],
        )
        .await;
        assert_eq!(out.unwrap_err().code(), Code::Unavailable);
        assert_eq!(times, vec![0]);
        assert!(consulted);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_never_left_are_retried_without_asking() {
        let (out, times, consulted) = run(
            RetryPolicy::default(),
            BreakerPolicy::default(),
            LONG,
            false,
            vec![Err(refused()), Err(refused()), Ok("pong")],
        )
        .await;
        assert_eq!(out.unwrap(), "pong");
        assert_eq!(times.len(), 3);
        assert!(
            !consulted,
            "safety is only looked up for UNAVAILABLE answers"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_final() {
        let (out, times, consulted) = run(
            RetryPolicy::default(),
            BreakerPolicy::default(),
            LONG,
            true,
            vec![Err(Status::invalid_argument("bad"))],
        )
        .await;
        assert_eq!(out.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(times, vec![0]);
        assert!(!consulted);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_deadline() {
        // 100 ms then 200 ms: the third attempt would start past 250 ms.
        let policy = RetryPolicy::default().with_jitter(0.0);
        let script = (0..5).map(|_| Err(no_agent())).collect();
        let (out, times, _) = run(
            policy,
            BreakerPolicy::default(),
            Duration::from_millis(250),
            true,
            script,
        )
        .await;
        assert!(out.is_err());
        assert_eq!(times, vec![0, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retries_with_policy_none() {
        let (out, times, _) = run(
            RetryPolicy::none(),
            BreakerPolicy::default(),
            LONG,
            true,
            vec![Err(refused())],
        )
        .await;
        assert!(out.is_err());
        assert_eq!(times, vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_stops_retries_once_it_opens() {
        let breaker = CircuitBreaker::new("s", BreakerPolicy::default().with_failure_threshold(3));
        let attempts = Mutex::new(0);
        let out: Result<(), Status> = with_retries(
            &RetryPolicy::default().with_max_attempts(10),
            &breaker,
            Instant::now() + LONG,
            "test",
            async { true },
            |_| {
                *attempts.lock().unwrap() += 1;
                async { Err(refused()) }
            },
        )
        .await;
        let err = out.unwrap_err();
        assert_eq!(*attempts.lock().unwrap(), 3);
        assert!(err.message().starts_with("circuit open"), "{err:?}");
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));
        // And the next call fails fast without an attempt.
        let out: Result<(), Status> = with_retries(
            &RetryPolicy::default(),
            &breaker,
            Instant::now() + LONG,
            "test",
            async { true },
            |_| async { panic!("no attempt while open") },
        )
        .await;
        assert_eq!(Failure::of(&out.unwrap_err()), Failure::CircuitOpen);
    }

    #[test]
    fn transport_failures_are_classified() {
        let connect = tonic::ConnectError("connection refused".into());
        let s = transport_status("https://s:1", &connect);
        assert_eq!(
            (s.code(), Failure::of(&s)),
            (Code::Unavailable, Failure::NotSent)
        );
        assert!(
            s.message().contains("cannot reach https://s:1"),
            "{}",
            s.message()
        );
        let s = transport_status("s", &tonic::TimeoutExpired(()));
        assert_eq!(
            (s.code(), Failure::of(&s)),
            (Code::DeadlineExceeded, Failure::LocalDeadline)
        );
        let s = transport_status("s", &std::io::Error::other("connection reset"));
        assert_eq!(
            (s.code(), Failure::of(&s)),
            (Code::Unavailable, Failure::Broken)
        );
    }
}
