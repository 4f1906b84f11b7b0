//! Counting handshake and identity failures per source address, to quarantine a source that
//! keeps failing (a scanner, a brute-force attempt, a misconfigured device hammering the port).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Sources tracked at once; beyond it, sources whose failures are all outside the window are
/// forgotten first, and new sources are not tracked until there is room (memory stays bounded
/// under a flood of spoofed-looking sources; the handshake budget still applies to them).
const MAX_TRACKED: usize = 16_384;

pub struct Tracker {
    after: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl Tracker {
    /// `after` failures within `window` quarantine a source; `after == 0` never does.
    pub fn new(after: u32, window: Duration) -> Tracker {
        Tracker {
            after,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure at `now`; `Some(count)` when this failure reaches the threshold (the
    /// source's record is then cleared: it is the quarantine's job from here).
    pub fn failure(&self, source: IpAddr, now: Instant) -> Option<u32> {
        if self.after == 0 {
            return None;
        }
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.window;
        let recent = |t: &Instant| now.saturating_duration_since(*t) < window;
        if map.len() >= MAX_TRACKED && !map.contains_key(&source) {
            map.retain(|_, times| times.iter().any(recent));
            if map.len() >= MAX_TRACKED {
                return None;
            }
        }
        let times = map.entry(source).or_default();
        times.retain(recent);
        times.push(now);
        let count = u32::try_from(times.len()).unwrap_or(u32::MAX);
        if count >= self.after {
            map.remove(&source);
            Some(count)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_failures_within_the_window_quarantine() {
        let t = Tracker::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.77.1.2".parse().unwrap();
        let other: IpAddr = "10.77.1.3".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(t.failure(ip, t0), None);
        assert_eq!(t.failure(other, t0), None);
        assert_eq!(t.failure(ip, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.failure(ip, t0 + Duration::from_secs(2)), Some(3));
        // Cleared after quarantine; the other source is counted on its own.
        assert_eq!(t.failure(ip, t0 + Duration::from_secs(3)), None);
        assert_eq!(t.failure(other, t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let t = Tracker::new(2, Duration::from_secs(10));
        let ip: IpAddr = "fd77::2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(t.failure(ip, t0), None);
        assert_eq!(t.failure(ip, t0 + Duration::from_secs(11)), None);
        assert_eq!(t.failure(ip, t0 + Duration::from_secs(12)), Some(2));
        assert_eq!(
            Tracker::new(0, Duration::from_secs(1)).failure(ip, t0),
            None
        );
    }
}
