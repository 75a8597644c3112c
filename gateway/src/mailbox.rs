//! [`Mailbox`]: the pushes of one player's session, numbered 1, 2, 3…, kept until the client
//! acknowledges them, bounded by count and age. While the player is online a push is written to
//! the connection and stays here until its ACK; while offline it only waits here. On a resume
//! the client says which seq it processed last, and everything above it is sent again in order,
//! so nothing is lost (within the bounds) and, since the client drops seqs it has seen, nothing
//! is processed twice. What the bounds drop goes oldest first and is counted.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One numbered push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// The player's push number.
    pub seq: u64,
    /// The message id the backend gave.
    pub msg_id: u32,
    /// Frame flags of the payload (JSON or opaque; never gzip here).
    pub flags: u32,
    /// The payload.
    #[serde(with = "b64")]
    pub payload: Bytes,
    /// When it was pushed, Unix milliseconds.
    pub at_ms: u64,
}

/// Why pushes were dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Dropped because the mailbox was full.
    pub overflow: u64,
    /// Dropped because they were older than the age limit.
    pub expired: u64,
}

/// A player's pushes (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mailbox {
    /// The seq the next push gets.
    next_seq: u64,
    /// Pushes not yet acknowledged, oldest first.
    messages: VecDeque<Pushed>,
    /// Dropped since the client last logged in (reported in LoginOk.dropped).
    dropped_since_login: u64,
    /// Most pushes kept.
    #[serde(skip)]
    max_messages: usize,
    /// Oldest push kept, in milliseconds.
    #[serde(skip)]
    max_age_ms: u64,
}

impl Mailbox {
    /// An empty mailbox; the first push gets seq 1.
    pub fn new(max_messages: usize, max_age_ms: u64) -> Self {
        Mailbox {
            next_seq: 1,
            messages: VecDeque::new(),
            dropped_since_login: 0,
            max_messages,
            max_age_ms,
        }
    }

    /// Sets the bounds (after loading a persisted mailbox).
    pub fn set_bounds(&mut self, max_messages: usize, max_age_ms: u64) {
        self.max_messages = max_messages;
        self.max_age_ms = max_age_ms;
    }

    /// Adds a push at time `now_ms`; returns it (with its seq) and how many old pushes the count
    /// bound dropped to make room.
    pub fn push(&mut self, msg_id: u32, flags: u32, payload: Bytes, now_ms: u64) -> (Pushed, u64) {
        let p = Pushed {
            seq: self.next_seq,
            msg_id,
            flags,
            payload,
            at_ms: now_ms,
        };
        self.next_seq += 1;
        let mut dropped = 0;
        if self.max_messages == 0 {
            self.dropped_since_login += 1;
            return (p, 1);
        }
        while self.messages.len() >= self.max_messages {
            self.messages.pop_front();
            dropped += 1;
        }
        self.dropped_since_login += dropped;
        self.messages.push_back(p.clone());
        (p, dropped)
    }

    /// The client processed every push up to `seq`: forget them. A seq never handed out is an
    /// error (the client is confused or lying). Returns how many were removed.
    pub fn ack(&mut self, seq: u64) -> Result<usize, u64> {
        if seq >= self.next_seq {
            return Err(self.next_seq - 1);
        }
        let mut n = 0;
        while self.messages.front().is_some_and(|m| m.seq <= seq) {
            self.messages.pop_front();
            n += 1;
        }
        Ok(n)
    }

    /// Drops pushes older than the age bound at `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> u64 {
        let mut n = 0;
        while self
            .messages
            .front()
            .is_some_and(|m| now_ms.saturating_sub(m.at_ms) > self.max_age_ms)
        {
            self.messages.pop_front();
            n += 1;
        }
        self.dropped_since_login += n;
        n
    }

    /// Pushes not yet acknowledged, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Pushed> {
        self.messages.iter()
    }

    /// How many pushes wait.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The highest seq handed out (0 before the first push).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The count of pushes dropped since the last login, reset to 0.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_since_login)
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(m: &Mailbox) -> Vec<u64> {
        m.pending().map(|p| p.seq).collect()
    }

    #[test]
    fn pushes_are_numbered_and_kept_until_acknowledged() {
        let mut m = Mailbox::new(10, 60_000);
        for i in 0..4 {
            let (p, dropped) = m.push(7, 0, Bytes::from(format!("m{i}")), 1000);
            assert_eq!((p.seq, dropped), (i + 1, 0));
        }
        assert_eq!(seqs(&m), [1, 2, 3, 4]);
        assert_eq!(m.ack(2), Ok(2));
        assert_eq!(seqs(&m), [3, 4]);
        assert_eq!(m.ack(2), Ok(0), "a repeated ack is harmless");
        assert_eq!(m.ack(5), Err(4), "seq 5 was never sent");
        assert_eq!(m.ack(4), Ok(2));
        assert!(m.is_empty());
        assert_eq!(m.push(7, 0, Bytes::new(), 1000).0.seq, 5, "numbers go on");
    }

    #[test]
    fn the_count_bound_drops_oldest_first_and_counts() {
        let mut m = Mailbox::new(3, 60_000);
        let mut dropped = 0;
        for _ in 0..5 {
            dropped += m.push(1, 0, Bytes::new(), 0).1;
        }
        assert_eq!(dropped, 2);
        assert_eq!(seqs(&m), [3, 4, 5]);
        assert_eq!(m.take_dropped(), 2);
        assert_eq!(m.take_dropped(), 0, "reset by the login that reported it");
    }

    #[test]
    fn the_age_bound_drops_old_pushes() {
        let mut m = Mailbox::new(10, 1000);
        m.push(1, 0, Bytes::new(), 0);
        m.push(1, 0, Bytes::new(), 500);
        m.push(1, 0, Bytes::new(), 1500);
        assert_eq!(m.expire(1000), 0, "exactly at the bound is kept");
        assert_eq!(m.expire(1600), 2);
        assert_eq!(seqs(&m), [3]);
        assert_eq!(m.take_dropped(), 2);
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut m = Mailbox::new(0, 1000);
        assert_eq!(m.push(1, 0, Bytes::new(), 0).1, 1);
        assert!(m.is_empty());
        assert_eq!(m.last_seq(), 1);
    }

    #[test]
    fn persisted_mailboxes_round_trip() {
        let mut m = Mailbox::new(10, 1000);
        m.push(3, 2, Bytes::from_static(b"{\"x\":1}"), 5);
        let json = serde_json::to_string(&m).unwrap();
        let mut back: Mailbox = serde_json::from_str(&json).unwrap();
        back.set_bounds(10, 1000);
        assert_eq!(seqs(&back), [1]);
        assert_eq!(
            back.pending().next().unwrap().payload,
            m.pending().next().unwrap().payload
        );
        assert_eq!(back.push(3, 2, Bytes::new(), 6).0.seq, 2);
    }
}
