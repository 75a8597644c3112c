//! Background tasks with a name: every task Croupier spawns goes through [`spawn`] (or
//! [`spawn_on`] with a [`TaskTracker`] that shutdown waits for), so it runs inside a span that
//! names it and shows up by name in logs. `clippy.toml` forbids a bare `tokio::spawn` elsewhere.

use std::future::Future;

use tokio::task::JoinHandle;
pub use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Spawns `fut` as a task named `name`, inside a span of that name under the current span.
#[allow(clippy::disallowed_methods)] // the one place that may call tokio::spawn
pub fn spawn<F>(name: &'static str, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(tracing::debug_span!("task", task = name)))
}

/// Like [`spawn`], tracked by `tracker`: `tracker.wait()` returns once it has ended.
pub fn spawn_on<F>(tracker: &TaskTracker, name: &'static str, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn(name, tracker.track_future(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tracked_task_is_waited_for() {
        let tracker = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn_on(&tracker, "test", async move {
            let _ = rx.await;
        });
        tracker.close();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), tracker.wait())
                .await
                .is_err(),
            "the tracker did not wait for its task"
        );
        tx.send(()).unwrap();
        tracker.wait().await;
        assert_eq!(tracker.len(), 0);
    }
}
