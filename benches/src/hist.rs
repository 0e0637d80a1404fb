//! A log-linear latency histogram (about 3 % relative error) that merges across agents and
//! worker processes: 64 exact buckets below 64, then 32 buckets per power of two.

use serde::{Deserialize, Serialize};

const EXACT: u64 = 64;
const SUB: u64 = 32;
const BUCKETS: usize = 64 + 58 * 32;

/// Counts of values (microseconds here) in log-linear buckets.
#[derive(Debug, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

/// The histogram as sent between processes: only non-empty buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SparseHist {
    /// `(bucket, count)` pairs.
    pub buckets: Vec<(u16, u64)>,
    /// Largest value recorded.
    pub max: u64,
}

fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros()); // >= 6
    let m = (v >> (e - 5)) & (SUB - 1);
    (EXACT + (e - 6) * SUB + m) as usize
}

/// The middle of a bucket's range.
fn value_of(b: usize) -> u64 {
    let b = b as u64;
    if b < EXACT {
        return b;
    }
    let e = (b - EXACT) / SUB + 6;
    let m = (b - EXACT) % SUB;
    let low = (SUB + m) << (e - 5);
    low + (1u64 << (e - 5)) / 2
}

impl Hist {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value_of(b).min(self.max));
            }
        }
        Some(self.max)
    }

    /// The sparse form.
    pub fn to_sparse(&self) -> SparseHist {
        SparseHist {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(b, c)| (b as u16, *c))
                .collect(),
            max: self.max,
        }
    }

    /// Back from the sparse form (unknown buckets are ignored).
    pub fn from_sparse(s: &SparseHist) -> Self {
        let mut h = Hist::default();
        for &(b, c) in &s.buckets {
            if let Some(slot) = h.counts.get_mut(usize::from(b)) {
                *slot += c;
                h.total += c;
            }
        }
        h.max = s.max;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut h = Hist::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5).expect("p50") as f64;
        let p99 = h.quantile(0.99).expect("p99") as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.04, "{p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.04, "{p99}");
        let back = Hist::from_sparse(&h.to_sparse());
        assert_eq!(back.quantile(0.5), h.quantile(0.5));
        assert!(Hist::default().quantile(0.5).is_none());
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
