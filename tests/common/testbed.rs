//! Shared pieces of the distributed test bed (`tests/testbed_compose.rs`, `tests/netfaults.rs`):
//! the `CROUPIER_REQUIRE_TESTBED` switch, running commands, free ports and timing.

use std::process::Command;
use std::time::{Duration, Instant};

/// True when `CROUPIER_REQUIRE_TESTBED=1`: a missing tool (docker-compose, debootstrap,
/// `ip netns`, `tc`) fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("CROUPIER_REQUIRE_TESTBED").as_deref() == Ok("1")
}

/// Checks that `what` is usable (`ok`); when it is not, panics under
/// `CROUPIER_REQUIRE_TESTBED=1` and otherwise prints why and returns false (the test skips).
pub fn ready(what: &str, ok: Result<(), String>) -> bool {
    match ok {
        Ok(()) => true,
        Err(why) if required() => {
            panic!("{what} is required (CROUPIER_REQUIRE_TESTBED=1) but not usable: {why}")
        }
        Err(why) => {
            eprintln!(
                "skipping: {what} not usable ({why}); set CROUPIER_REQUIRE_TESTBED=1 to fail instead"
            );
            false
        }
    }
}

/// Runs `program args…`: (success, stdout, stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("cannot run {program}: {e}")),
    }
}

/// Runs `program args…`, which must succeed; returns its stdout.
pub fn must(program: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(program, args);
    assert!(ok, "{program} {args:?} failed: {err}{out}");
    out
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns `Some`, at most `timeout`; returns the value and how
/// long it took, or None.
pub async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints one timing line of the test bed's report (collected by scripts/testbed.sh).
pub fn report(scenario: &str, what: &str, took: Duration) {
    eprintln!(
        "TESTBED-TIMING {scenario}: {what} {:.2} s",
        took.as_secs_f64()
    );
}
