//! Latency statistics of one load phase: throughput, nearest-rank percentiles, status counts.

use std::collections::BTreeMap;
use std::time::Duration;

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What one worker saw during a phase.
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    /// Latencies of successful (2xx) requests, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Responses by status code (0 = transport error).
    pub statuses: BTreeMap<u16, u64>,
}

impl WorkerStats {
    /// Records one response.
    pub fn record(&mut self, status: u16, latency: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            self.latencies_us
                .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }
}

/// The summary of a phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSummary {
    /// Open connections (one per worker).
    pub connections: usize,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests (non-2xx or transport errors).
    pub errors: u64,
    /// Wall time of the phase.
    pub seconds: f64,
    /// Successful requests per second.
    pub per_second: f64,
    /// Median latency of successful requests, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
    /// Worst latency, milliseconds.
    pub max_ms: Option<f64>,
    /// Responses by status code (0 = transport error).
    pub statuses: BTreeMap<u16, u64>,
}

impl PhaseSummary {
    /// Merges the workers' records of a phase that lasted `elapsed`.
    pub fn from_workers(connections: usize, workers: Vec<WorkerStats>, elapsed: Duration) -> Self {
        let mut all = Vec::new();
        let mut statuses = BTreeMap::new();
        for w in workers {
            all.extend(w.latencies_us);
            for (s, n) in w.statuses {
                *statuses.entry(s).or_default() += n;
            }
        }
        all.sort_unstable();
        let ok = all.len() as u64;
        let total: u64 = statuses.values().sum();
        let seconds = elapsed.as_secs_f64();
        let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
        Self {
            connections,
            ok,
            errors: total - ok,
            seconds,
            per_second: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            p50_ms: ms(percentile(&all, 50.0)),
            p99_ms: ms(percentile(&all, 99.0)),
            max_ms: ms(all.last().copied()),
            statuses,
        }
    }

    /// Fraction of requests that failed.
    pub fn error_rate(&self) -> f64 {
        let total = self.ok + self.errors;
        if total == 0 {
            1.0
        } else {
            self.errors as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.1), Some(1));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 0.0), None);
        assert_eq!(percentile(&v, 101.0), None);
        // 1000 samples: p99 is the 990th.
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
    }

    #[test]
    fn merging_workers() {
        let mut a = WorkerStats::default();
        let mut b = WorkerStats::default();
        for ms in [1u64, 2, 3] {
            a.record(200, Duration::from_millis(ms));
        }
        b.record(201, Duration::from_millis(4));
        b.record(500, Duration::from_millis(100));
        b.record(0, Duration::from_millis(1));
        let s = PhaseSummary::from_workers(2, vec![a, b], Duration::from_secs(2));
        assert_eq!((s.ok, s.errors), (4, 2));
        assert_eq!(s.per_second, 2.0);
        assert_eq!(s.p50_ms, Some(2.0));
        assert_eq!(s.p99_ms, Some(4.0));
        assert_eq!(
            s.max_ms,
            Some(4.0),
            "failed requests do not count in latency"
        );
        assert_eq!(s.statuses.get(&500), Some(&1));
        assert!((s.error_rate() - 2.0 / 6.0).abs() < 1e-9);
        let empty = PhaseSummary::from_workers(1, vec![], Duration::ZERO);
        assert_eq!(
            (empty.per_second, empty.p50_ms, empty.error_rate()),
            (0.0, None, 1.0)
        );
    }
}
