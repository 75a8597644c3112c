//! Exponential backoff with jitter (defaults from the game-node design: 100 ms → 30 s, ×2,
//! ±20 %).

use std::time::Duration;

use rand::Rng;

/// Backoff state.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30), 0.2)
    }
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`, each delay varied by ±`jitter` (0.2 = 20 %).
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            next: initial,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = 1.0 + rand::rng().random_range(-self.jitter..=self.jitter);
        base.mul_f64(factor)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_jitters_within_bounds() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        let bases = [
            100u64, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000,
        ];
        for (d, base) in delays.iter().zip(bases) {
            let ms = d.as_millis() as f64;
            assert!(
                ms >= base as f64 * 0.8 - 1.0 && ms <= base as f64 * 1.2 + 1.0,
                "{ms} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(121));
    }
}
