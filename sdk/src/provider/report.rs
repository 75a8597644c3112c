//! [`Reporter`]: what a provider tells the server about its node besides answers: node events
//! and the node's inventory. Reports wait in a bounded queue while no tunnel is open and go out
//! on the next one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use croupier_proto::control::v1::{
    AgentFrame, MetricSample, MetricsReport, NodeEvent, NodeInventory, agent_frame,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Reports queued while no tunnel is open; past this the oldest are dropped (and counted).
pub const MAX_QUEUED_REPORTS: usize = 1024;

/// Sends node events and the node's inventory to the server over the tunnel. Get it from
/// [`Provider::reporter`](super::Provider::reporter); clones share one queue.
#[derive(Clone, Default)]
pub struct Reporter {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<AgentFrame>>,
    notify: Notify,
    inventory: Mutex<Option<NodeInventory>>,
    gauges: Mutex<std::collections::BTreeMap<String, f64>>,
    dropped: AtomicU64,
}

impl Reporter {
    /// Reports an event on this node (the server sets its node id, seq and receive time). The
    /// type is dotted lowercase, e.g. `container.die`; `timestamp` 0 means now.
    pub fn event(&self, mut event: NodeEvent) {
        if event.timestamp <= 0 {
            event.timestamp = crate::job::now_ms();
        }
        self.push(agent_frame::Frame::NodeEvent(event));
    }

    /// Sets the node's inventory: sent with every registration from now on, and at once over
    /// the open tunnel (or the next one). The server keeps a new version only when it differs
    /// from the last.
    pub fn inventory(&self, inventory: NodeInventory) {
        *self.inner.inventory.lock() = Some(inventory.clone());
        self.drop_queued_inventory();
        self.push(agent_frame::Frame::Inventory(Box::new(inventory)));
    }

    /// Sends metric samples (the node pack's batches). Empty batches are not sent.
    pub fn metrics(&self, samples: Vec<MetricSample>) {
        if !samples.is_empty() {
            self.push(agent_frame::Frame::Metrics(MetricsReport { samples }));
        }
    }

    /// Sets a custom gauge, e.g. players online: the node pack's samples carry it as
    /// `custom.<name>` (other characters than `[A-Za-z0-9._/:-]` become `_`) from now on.
    pub fn gauge(&self, name: &str, value: f64) {
        self.inner.gauges.lock().insert(name.to_string(), value);
    }

    /// The custom gauges set so far.
    pub fn gauges(&self) -> Vec<(String, f64)> {
        self.inner
            .gauges
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Whether an inventory was set (registrations carry it).
    pub fn has_inventory(&self) -> bool {
        self.inner.inventory.lock().is_some()
    }

    /// Reports waiting for a tunnel.
    pub fn queued(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Reports dropped because the queue was full while no tunnel was open.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, frame: agent_frame::Frame) {
        let mut queue = self.inner.queue.lock();
        if queue.len() >= MAX_QUEUED_REPORTS {
            queue.pop_front();
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("node report queue full: the oldest report was dropped");
        }
        queue.push_back(AgentFrame { frame: Some(frame) });
        drop(queue);
        self.inner.notify.notify_one();
    }

    /// The inventory a registration carries; a queued inventory frame is dropped, since the
    /// registration delivers it.
    pub(crate) fn for_registration(&self) -> Option<NodeInventory> {
        let inventory = self.inner.inventory.lock().clone();
        if inventory.is_some() {
            self.drop_queued_inventory();
        }
        inventory
    }

    /// Drops an inventory frame still queued: a newer one (or the registration) replaces it.
    fn drop_queued_inventory(&self) {
        self.inner
            .queue
            .lock()
            .retain(|f| !matches!(f.frame, Some(agent_frame::Frame::Inventory(_))));
    }

    /// Sends queued reports down `tunnel` until `over`; what the tunnel did not take stays
    /// queued for the next one.
    pub(crate) async fn forward(&self, tunnel: mpsc::Sender<AgentFrame>, over: CancellationToken) {
        loop {
            let next = self.inner.queue.lock().pop_front();
            let Some(frame) = next else {
                tokio::select! {
                    _ = over.cancelled() => return,
                    _ = self.inner.notify.notified() => continue,
                }
            };
            let sent = tokio::select! {
                _ = over.cancelled() => Err(frame),
                r = tunnel.send(frame.clone()) => r.map_err(|_| frame),
            };
            if let Err(frame) = sent {
                self.inner.queue.lock().push_front(frame);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(f: &AgentFrame) -> &'static str {
        match f.frame {
            Some(agent_frame::Frame::NodeEvent(_)) => "event",
            Some(agent_frame::Frame::Inventory(_)) => "inventory",
            _ => "other",
        }
    }

    #[tokio::test]
    async fn queued_reports_go_out_on_the_next_tunnel_in_order() {
        let r = Reporter::default();
        r.event(NodeEvent {
            r#type: "a.b".into(),
            ..Default::default()
        });
        r.inventory(NodeInventory::default());
        r.inventory(NodeInventory {
            hostname: "h".into(),
            ..Default::default()
        });
        // A closed tunnel keeps the reports queued.
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        r.forward(tx, CancellationToken::new()).await;
        let (tx, mut rx) = mpsc::channel(8);
        let over = CancellationToken::new();
        let task = croupier_proto::task::spawn("test forward", {
            let (r, over) = (r.clone(), over.clone());
            async move { r.forward(tx, over).await }
        });
        let first = rx.recv().await.unwrap();
        assert_eq!(kind(&first), "event");
        assert!(matches!(&first.frame, Some(agent_frame::Frame::NodeEvent(e)) if e.timestamp > 0));
        // Only the latest inventory is sent.
        let second = rx.recv().await.unwrap();
        assert!(
            matches!(&second.frame, Some(agent_frame::Frame::Inventory(i)) if i.hostname == "h")
        );
        r.event(NodeEvent::default());
        assert_eq!(kind(&rx.recv().await.unwrap()), "event");
        over.cancel();
        task.await.unwrap();
        assert_eq!(r.for_registration().unwrap().hostname, "h");
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let r = Reporter::default();
        for _ in 0..MAX_QUEUED_REPORTS + 3 {
            r.event(NodeEvent::default());
        }
        assert_eq!(r.dropped(), 3);
        assert_eq!(r.inner.queue.lock().len(), MAX_QUEUED_REPORTS);
    }
}
