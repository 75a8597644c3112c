//! [`EventLog`]: this server's recent node events, numbered, bounded by count and age, replayed
//! to readers and broadcast to followers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use croupier_proto::control::v1::NodeEvent;
use croupier_registry::model::now_ms;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Followers' queue: a follower this far behind is told of a gap and catches up from the log.
const FOLLOW_QUEUE: usize = 1024;

/// The events of the nodes this server holds, newest last.
pub struct EventLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<NodeEvent>>,
    max_events: usize,
    max_age: Duration,
}

struct Inner {
    events: VecDeque<Arc<NodeEvent>>,
    next_seq: i64,
}

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this node's ("" for all).
    pub node_id: String,
    /// Only this type, or this prefix when it ends with "." ("" for all).
    pub event_type: String,
}

impl EventFilter {
    /// Whether `e` passes the filter.
    pub fn matches(&self, e: &NodeEvent) -> bool {
        (self.node_id.is_empty() || e.node_id == self.node_id)
            && (self.event_type.is_empty()
                || if self.event_type.ends_with('.') {
                    e.r#type.starts_with(&self.event_type)
                } else {
                    e.r#type == self.event_type
                })
    }
}

/// What a replay found: the events, and the seqs asked for that retention dropped.
#[derive(Debug, Default)]
pub struct Replay {
    /// `(from, next)`: seqs `from..next` were asked for and are gone.
    pub gap: Option<(i64, i64)>,
    /// The retained events asked for, oldest first (unfiltered).
    pub events: Vec<Arc<NodeEvent>>,
    /// The seq the next event will get: followers skip what is below it.
    pub next: i64,
}

impl EventLog {
    /// A log keeping at most `max_events` events, none older than `max_age`.
    pub fn new(max_events: usize, max_age: Duration) -> Self {
        EventLog {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
            }),
            tx: broadcast::channel(FOLLOW_QUEUE).0,
            max_events: max_events.max(1),
            max_age,
        }
    }

    /// Numbers `event`, stamps when it was received (and when it happened, if the sender did
    /// not say), keeps it and hands it to followers. Returns its seq.
    pub fn record(&self, mut event: NodeEvent) -> i64 {
        let now = now_ms();
        event.received_at = now;
        if event.timestamp <= 0 {
            event.timestamp = now;
        }
        let event = {
            let mut inner = self.inner.lock();
            event.seq = inner.next_seq;
            inner.next_seq += 1;
            let event = Arc::new(event);
            inner.events.push_back(event.clone());
            self.prune(&mut inner, now);
            event
        };
        metrics::counter!(crate::metrics::NODE_EVENTS).increment(1);
        tracing::debug!(node_id = %event.node_id, r#type = %event.r#type, entity = %event.entity_id, status = %event.status, "node event");
        let seq = event.seq;
        let _ = self.tx.send(event);
        seq
    }

    fn prune(&self, inner: &mut Inner, now: i64) {
        let oldest = now - self.max_age.as_millis() as i64;
        while inner.events.len() > self.max_events
            || inner.events.front().is_some_and(|e| e.received_at < oldest)
        {
            inner.events.pop_front();
        }
    }

    /// The retained events from seq `from_seq` on, or (with `from_seq` 0) those received at or
    /// after `since` (Unix ms; 0 with `from_seq` 0 replays nothing). A `from_seq` older than the
    /// oldest retained event is reported as a gap.
    pub fn replay(&self, from_seq: i64, since: i64) -> Replay {
        let mut inner = self.inner.lock();
        self.prune(&mut inner, now_ms());
        let next = inner.next_seq;
        let first_kept = inner.events.front().map_or(next, |e| e.seq);
        if from_seq > 0 {
            let gap = (from_seq < first_kept).then_some((from_seq, first_kept));
            let events = inner
                .events
                .iter()
                .filter(|e| e.seq >= from_seq)
                .cloned()
                .collect();
            return Replay { gap, events, next };
        }
        let events = if since <= 0 {
            Vec::new()
        } else {
            inner
                .events
                .iter()
                .filter(|e| e.received_at >= since)
                .cloned()
                .collect()
        };
        Replay {
            gap: None,
            events,
            next,
        }
    }

    /// New events as they are recorded. Subscribe before replaying so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<NodeEvent>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(node: &str, t: &str) -> NodeEvent {
        NodeEvent {
            r#type: t.into(),
            node_id: node.into(),
            ..Default::default()
        }
    }

    #[test]
    fn numbers_keeps_and_replays_with_the_gap_told() {
        let log = EventLog::new(3, Duration::from_secs(3600));
        for i in 0..5 {
            assert_eq!(log.record(ev("n1", &format!("t.{i}"))), i + 1);
        }
        // Only seqs 3, 4, 5 are kept: asking from 1 reports 1..3 as gone.
        let r = log.replay(1, 0);
        assert_eq!(r.gap, Some((1, 3)));
        assert_eq!(
            r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let r = log.replay(4, 0);
        assert_eq!(r.gap, None);
        assert_eq!(r.events.len(), 2);
        // By time: everything kept was received just now.
        assert_eq!(log.replay(0, now_ms() - 60_000).events.len(), 3);
        assert!(log.replay(0, 0).events.is_empty());
        // A stamp from the sender is kept; a missing one is filled.
        assert!(
            r.events
                .iter()
                .all(|e| e.timestamp > 0 && e.received_at > 0)
        );
    }

    #[test]
    fn old_events_age_out() {
        let log = EventLog::new(100, Duration::ZERO);
        log.record(ev("n1", "a"));
        std::thread::sleep(Duration::from_millis(5));
        let r = log.replay(1, 0);
        assert_eq!(r.gap, Some((1, 2)));
        assert!(r.events.is_empty());
    }

    #[test]
    fn filter_by_node_and_type_or_prefix() {
        let die = ev("n1", "container.die");
        let f = |node: &str, t: &str| EventFilter {
            node_id: node.into(),
            event_type: t.into(),
        };
        assert!(f("", "").matches(&die));
        assert!(f("n1", "container.").matches(&die));
        assert!(f("", "container.die").matches(&die));
        assert!(!f("", "container.di").matches(&die));
        assert!(!f("n2", "").matches(&die));
        assert!(!f("", "node.").matches(&die));
    }
}
