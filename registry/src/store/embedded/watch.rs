//! Watches: the bounded history of past events, the registered watchers with their bounded
//! queues, and the stream a watch returns (replay, then live events, then `Lagged` if its queue
//! overflowed).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use super::super::{Revision, StoreError, WatchEvent};
use super::Inner;
use super::state::State;

/// A registered watcher: where to send the events it wants.
pub(super) struct Watcher {
    prefix: String,
    /// Live events below this revision are not sent (a watch from a future revision).
    min_revision: Revision,
    pub(super) tx: mpsc::Sender<WatchEvent>,
    /// Set before `tx` is dropped when the watcher's queue overflowed.
    lagged: Arc<AtomicBool>,
}

impl State {
    /// Sends an event to the watchers that want it and keeps it in history. Never blocks: a
    /// watcher whose queue is full is dropped as lagged.
    pub(super) fn emit(&mut self, event: WatchEvent) {
        let revision = event.revision();
        self.watchers.retain(|id, w| {
            if revision < w.min_revision || !event.kv.key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        watcher = *id,
                        prefix = %w.prefix,
                        revision,
                        "embedded store: watcher fell behind; dropping it"
                    );
                    w.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if self.opts.history_limit == 0 {
            self.first_kept = revision + 1;
            return;
        }
        self.history_bytes += event_bytes(&event);
        self.history.push_back(event);
        while self.history.len() > self.opts.history_limit
            || (self.history_bytes > self.opts.history_bytes_limit && self.history.len() > 1)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes = self.history_bytes.saturating_sub(event_bytes(&old));
                self.first_kept = old.revision() + 1;
            }
        }
    }

    pub(super) fn compact(&mut self, revision: Revision) {
        let target = revision.min(self.revision + 1);
        if target <= self.first_kept {
            return;
        }
        self.first_kept = target;
        while self
            .history
            .front()
            .is_some_and(|event| event.revision() < target)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes = self.history_bytes.saturating_sub(event_bytes(&old));
            }
        }
    }

    /// Reads the replay and registers a watcher, in one go under the lock.
    pub(super) fn watch(
        &mut self,
        prefix: &str,
        from_revision: Revision,
    ) -> Result<Subscription, StoreError> {
        let mut replay = VecDeque::new();
        if from_revision > 0 {
            if from_revision < self.first_kept {
                return Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest: self.first_kept,
                });
            }
            if let Some(front) = self.history.front() {
                // History revisions are contiguous, so the start is an index.
                let skip = usize::try_from((from_revision - front.revision()).max(0))
                    .unwrap_or(usize::MAX);
                if skip < self.history.len() {
                    replay.extend(
                        self.history
                            .range(skip..)
                            .filter(|event| event.kv.key.starts_with(prefix))
                            .cloned(),
                    );
                }
            }
        }
        let (tx, rx) = mpsc::channel(self.opts.watch_queue.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_watcher;
        self.next_watcher += 1;
        self.watchers.insert(
            id,
            Watcher {
                prefix: prefix.to_owned(),
                min_revision: from_revision,
                tx,
                lagged: lagged.clone(),
            },
        );
        Ok(Subscription {
            replay,
            id,
            rx,
            lagged,
        })
    }
}

/// What [`State::watch`] hands to the new stream.
pub(super) struct Subscription {
    replay: VecDeque<WatchEvent>,
    id: u64,
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
}

/// A watch stream: the replayed events, then the live queue, then `Lagged` if it overflowed.
pub(super) struct EmbeddedWatch {
    replay: VecDeque<WatchEvent>,
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
    done: bool,
    _registration: Registration,
}

impl EmbeddedWatch {
    /// The stream of `sub`, unregistering itself from `inner` when dropped.
    pub(super) fn new(sub: Subscription, inner: Weak<Inner>) -> Self {
        EmbeddedWatch {
            replay: sub.replay,
            rx: sub.rx,
            lagged: sub.lagged,
            done: false,
            _registration: Registration { inner, id: sub.id },
        }
    }
}

impl Stream for EmbeddedWatch {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(event) = this.replay.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => {
                this.done = true;
                if this.lagged.load(Ordering::Acquire) {
                    Poll::Ready(Some(Err(StoreError::Lagged)))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Removes a watcher from the store when its stream is dropped.
struct Registration {
    inner: Weak<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().watchers.remove(&self.id);
        }
    }
}

/// Bytes an event holds in history (its value and the previous one).
fn event_bytes(event: &WatchEvent) -> usize {
    event.kv.value.len() + event.prev.as_ref().map_or(0, |p| p.value.len())
}
