//! The fleet as the control plane knows it: what each node is and what happens on it.
//!
//! Layout:
//! - [`events`] — [`EventLog`]: this server's recent node events, replayed and followed.
//! - [`inventory`] — inventory checks, the stored version record and the diff of two versions.
//! - [`metrics`] — [`MetricsHistory`]: the nodes' metric samples, raw and per step.
//! - this module — the checks of an event an agent reports.

pub mod events;
pub mod inventory;
pub mod metrics;

pub use events::{EventFilter, EventLog, Replay};
pub use metrics::{HistoryTimes, MetricsHistory};

use croupier_proto::control::v1::NodeEvent;
use croupier_proto::limits::excerpt;

/// Most entries of an event's `data`.
const MAX_DATA_ENTRIES: usize = 32;
/// Most bytes of an event's `data` (keys and values).
const MAX_DATA_BYTES: usize = 8 * 1024;

/// An event as an agent reported it, checked: a dotted lowercase type of at most 64
/// characters, bounded `data`; the entity id and status are cut to 256 and 64 characters and
/// the message to `max_text` characters. The agent's own `node_id`, `seq`, `received_at`,
/// `game_id` and `env` are ignored: the server sets them.
pub fn check_agent_event(mut e: NodeEvent, max_text: usize) -> Result<NodeEvent, String> {
    let type_ok = !e.r#type.is_empty()
        && e.r#type.len() <= 64
        && e.r#type
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !type_ok {
        return Err(format!(
            "event type {:?} must be 1-64 characters of [a-z0-9._-], e.g. \"container.die\"",
            excerpt(&e.r#type, 64)
        ));
    }
    let bytes: usize = e.data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if e.data.len() > MAX_DATA_ENTRIES || bytes > MAX_DATA_BYTES {
        return Err(format!(
            "event {} has {} data entries, {bytes} bytes; at most {MAX_DATA_ENTRIES} entries and \
             {MAX_DATA_BYTES} bytes",
            e.r#type,
            e.data.len()
        ));
    }
    e.entity_id = excerpt(&e.entity_id, 256);
    e.status = excerpt(&e.status, 64);
    e.message = excerpt(&e.message, max_text);
    e.seq = 0;
    e.received_at = 0;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_events_are_checked_and_cut() {
        let e = NodeEvent {
            r#type: "container.die".into(),
            message: "x".repeat(5000),
            seq: 77,
            ..Default::default()
        };
        let e = check_agent_event(e, 100).unwrap();
        assert!(e.message.chars().count() <= 101);
        assert_eq!(e.seq, 0);
        for bad in ["", "Container.Die", "a b", &"x".repeat(65)] {
            let e = NodeEvent {
                r#type: bad.into(),
                ..Default::default()
            };
            assert!(
                check_agent_event(e, 100)
                    .unwrap_err()
                    .contains("[a-z0-9._-]")
            );
        }
        let mut e = NodeEvent {
            r#type: "a".into(),
            ..Default::default()
        };
        e.data = (0..40).map(|i| (i.to_string(), String::new())).collect();
        assert!(
            check_agent_event(e, 100)
                .unwrap_err()
                .contains("40 data entries")
        );
    }
}
