//! Metric handles looked up once per label set. Recording through `metrics::counter!(name,
//! labels)` builds the key on every call (label strings, hashing, the recorder's map), which on
//! the call path costs more than the recording itself; [`Handles`] keeps the counter and
//! histogram of each label set it has seen, found again by the labels joined into a
//! thread-local buffer (no allocation once warm). Label sets must already be bounded (see each
//! metric's documentation); the cache also stops growing at [`MAX_LABEL_SETS`] and clears.
//!
//! The process-wide switch [`set_recording`] (used by `bench invoke --metrics-rounds` to measure
//! what metrics cost) turns recording through these handles off as well.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{Counter, Histogram};
use parking_lot::RwLock;

/// Most label sets one cache keeps before it starts again.
pub const MAX_LABEL_SETS: usize = 10_000;

static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off for the whole process.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// Whether metrics are recorded.
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

thread_local! {
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A counter and a histogram per label set.
#[derive(Default)]
pub struct Handles {
    map: RwLock<HashMap<String, (Counter, Histogram)>>,
}

impl Handles {
    /// A new, empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one event of the label set `values` (in a fixed order) and records `value` in its
    /// histogram; `make` registers the two handles the first time the set is seen.
    pub fn record(&self, values: &[&str], value: f64, make: impl FnOnce() -> (Counter, Histogram)) {
        if !recording() {
            return;
        }
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            key.clear();
            for v in values {
                key.push_str(v);
                key.push('\u{1f}');
            }
            if let Some((c, h)) = self.map.read().get(key.as_str()) {
                c.increment(1);
                h.record(value);
                return;
            }
            let (c, h) = make();
            c.increment(1);
            h.record(value);
            let mut map = self.map.write();
            if map.len() >= MAX_LABEL_SETS {
                map.clear();
            }
            map.insert(key.clone(), (c, h));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_label_set_is_registered_once() {
        let handles = Handles::new();
        let mut made = 0;
        for values in [["a", "ok"], ["a", "ok"], ["b", "ok"], ["a", "ok"]] {
            handles.record(&values, 1.0, || {
                made += 1;
                (Counter::noop(), Histogram::noop())
            });
        }
        assert_eq!(made, 2);
        // "a" + "bc" and "ab" + "c" are different sets.
        handles.record(&["ab", "c"], 1.0, || {
            made += 1;
            (Counter::noop(), Histogram::noop())
        });
        handles.record(&["a", "bc"], 1.0, || {
            made += 1;
            (Counter::noop(), Histogram::noop())
        });
        assert_eq!(made, 4);
    }
}
