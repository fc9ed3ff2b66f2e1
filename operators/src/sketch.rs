//! A quantile sketch with a relative-error guarantee: DDSketch (Masson, Rim and Lee, "DDSketch: A Fast and
//! Fully-Mergeable Quantile Sketch with Relative-Error Guarantees", VLDB 2019).
//!
//! Why this sketch: a window's percentiles must merge like its other statistics — live windows add readings in
//! any order, rollups and SQL fold partial windows together — and DDSketch's state is just a count per logarithmic
//! bucket, so merging is adding counts: the result does not depend on arrival order or grouping at all (the
//! property tests check it bit for bit). Its guarantee is relative: every quantile it answers lies within
//! [`RELATIVE_ACCURACY`] (1 %) of the true value at that rank, whatever the distribution, where rank-error sketches
//! (t-digest, KLL) can be far off in the tails a p99 asks about.
//!
//! **The algorithm.** With γ = (1 + α) / (1 − α), a value x > 0 goes to bucket ⌈log_γ x⌉, which covers
//! (γ^(k−1), γ^k]; the bucket's representative 2γ^k / (γ + 1) is within α of every value in it. Negative values go
//! to a second store by magnitude, exact zeros to a counter. A quantile q is the representative of the bucket that
//! holds the value of rank ⌊q (n − 1)⌋ in sorted order (so within α of `sorted[⌊q (n − 1)⌋]`).
//!
//! **Bounded memory.** Each store keeps its buckets as a dense vector of counts from its lowest to its highest
//! bucket, at most [`MAX_BUCKETS`] of them: beyond that, the buckets of the smallest magnitudes are folded into the
//! lowest one kept. Folding depends only on the highest bucket ever seen, so it too is independent of order. The
//! guarantee therefore holds for values within γ^[`MAX_BUCKETS`] ≈ 10^17.6 of the largest magnitude of the same
//! sign in the window; smaller magnitudes answer as that bound (still in order). A store costs 8 bytes per bucket
//! between its lowest and highest: values spanning a factor of 1.5 take ~21 buckets.
//!
//! **Cost.** One `ln` per reading and one increment: live windows keep a sketch only at the finest sketched width
//! and merge a coarser window's from its finer windows when it is read (`LiveWindows`; merging is exact).

use serde::{Deserialize, Serialize};

/// α: every quantile answered is within this fraction of the true value at its rank.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// γ = (1 + α) / (1 − α).
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// The most buckets a store keeps (per sign).
pub const MAX_BUCKETS: usize = 2048;

/// The quantiles every window reports by name.
pub const NAMED_QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)];

/// The bucket a value goes to, computed once per reading and added to every window it falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Zero,
    Positive(i32),
    Negative(i32),
}

impl Bucket {
    /// The bucket of `value` (`None` for NaN and infinities, which readings never are).
    pub fn of(value: f64) -> Option<Bucket> {
        if !value.is_finite() {
            return None;
        }
        if value == 0.0 {
            return Some(Bucket::Zero);
        }
        let key = key_of(value.abs());
        Some(if value > 0.0 { Bucket::Positive(key) } else { Bucket::Negative(key) })
    }
}

fn ln_gamma() -> f64 {
    GAMMA.ln()
}

/// ⌈log_γ x⌉ for a finite x > 0 (within ±38 000: subnormals to `f64::MAX`).
fn key_of(x: f64) -> i32 {
    (x.ln() / ln_gamma()).ceil() as i32
}

/// The representative of bucket `key`: 2γ^k / (γ + 1), within α of every value of the bucket; `f64::MAX` where
/// that overflows (the highest buckets, which callers clamp to the window's max anyway).
fn value_of(key: i32) -> f64 {
    let v = (key as f64 * ln_gamma()).exp() * (2.0 / (GAMMA + 1.0));
    if v.is_finite() { v } else { f64::MAX }
}

/// One sign's buckets: `counts[i]` is the count of bucket `offset + i`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
}

impl Store {
    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn highest(&self) -> Option<i32> {
        (!self.counts.is_empty()).then(|| self.offset + self.counts.len() as i32 - 1)
    }

    /// The count of bucket `key` (0 outside the buckets held).
    fn count_of(&self, key: i32) -> u64 {
        usize::try_from(i64::from(key) - i64::from(self.offset))
            .ok()
            .and_then(|i| self.counts.get(i))
            .copied()
            .unwrap_or(0)
    }

    fn add(&mut self, key: i32, count: u64) {
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(count);
            return;
        }
        let highest = self.offset + self.counts.len() as i32 - 1;
        if key > highest {
            // Fold what falls below the new lowest bucket first (never a vector longer than the limit).
            let lowest_kept = key - (MAX_BUCKETS as i32 - 1);
            if lowest_kept > self.offset {
                let gone = ((lowest_kept - self.offset) as usize).min(self.counts.len());
                let folded: u64 = self.counts.drain(..gone).sum();
                self.offset = lowest_kept;
                match self.counts.first_mut() {
                    Some(lowest) => *lowest += folded,
                    None => self.counts.push(folded),
                }
            }
            self.counts.resize((key - self.offset + 1) as usize, 0);
        } else if key < self.offset {
            // Below the lowest bucket: grow downwards unless that would exceed the limit, then fold it in.
            let lowest_kept = highest - (MAX_BUCKETS as i32 - 1);
            let key = key.max(lowest_kept);
            if key < self.offset {
                let grow = (self.offset - key) as usize;
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = key;
            }
        }
        let key = key.max(self.offset);
        self.counts[(key - self.offset) as usize] += count;
    }

    fn merge(&mut self, other: &Store) {
        let Some(other_highest) = other.highest() else { return };
        // Make room for the other's highest first, so its lower buckets fold where they should.
        if self.highest().is_none_or(|h| h < other_highest) {
            self.add(other_highest, 0);
        }
        // And room down to its lowest, as far as the limit allows (what `add` would make for its lowest bucket).
        self.add(other.offset, 0);
        if other.offset >= self.offset {
            // Every bucket of the other has its own here: add the counts as slices (a window sketch derived from
            // finer ones is up to 96 such merges: `LiveWindows`).
            let from = (other.offset - self.offset) as usize;
            for (mine, theirs) in self.counts[from..from + other.counts.len()].iter_mut().zip(&other.counts) {
                *mine += theirs;
            }
            return;
        }
        // Its lowest buckets fold into the lowest kept here.
        for (i, &count) in other.counts.iter().enumerate() {
            if count > 0 {
                self.add(other.offset + i as i32, count);
            }
        }
    }

    /// Buckets from lowest to highest key, with their counts (empty ones skipped).
    fn buckets(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, &c)| (self.offset + i as i32, c))
    }

    fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>()
    }
}

/// A DDSketch of a window's values.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Sketch {
    zeros: u64,
    positive: Store,
    negative: Store,
}

/// Why stored sketch bytes could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SketchDecodeError {
    #[error("sketch bytes end early")]
    Truncated,
    #[error("sketch format version {0} is not known (this Weir reads version 1); upgrade Weir to read it")]
    UnknownVersion(u8),
    #[error("sketch store of {0} buckets exceeds the limit of {MAX_BUCKETS}")]
    TooManyBuckets(u64),
    #[error("sketch bucket key out of range")]
    KeyOutOfRange,
    #[error("{0} bytes follow the sketch")]
    TrailingBytes(usize),
}

impl Sketch {
    /// Adds `count` values of `bucket`.
    pub fn add(&mut self, bucket: Bucket, count: u64) {
        match bucket {
            Bucket::Zero => self.zeros += count,
            Bucket::Positive(key) => self.positive.add(key, count),
            Bucket::Negative(key) => self.negative.add(key, count),
        }
    }

    /// How many values of `bucket` it holds.
    pub fn count_of(&self, bucket: Bucket) -> u64 {
        match bucket {
            Bucket::Zero => self.zeros,
            Bucket::Positive(key) => self.positive.count_of(key),
            Bucket::Negative(key) => self.negative.count_of(key),
        }
    }

    /// Adds one value (NaN and infinities are ignored: readings never hold them).
    pub fn add_value(&mut self, value: f64) {
        if let Some(bucket) = Bucket::of(value) {
            self.add(bucket, 1);
        }
    }

    /// Adds every value of `other` (commutative and associative: the same sketch in any order).
    pub fn merge(&mut self, other: &Sketch) {
        self.zeros += other.zeros;
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
    }

    /// How many values it holds.
    pub fn count(&self) -> u64 {
        self.zeros + self.positive.total() + self.negative.total()
    }

    /// The value at quantile `q` (0 ≤ q ≤ 1): within [`RELATIVE_ACCURACY`] of the value of rank ⌊q (n − 1)⌋; `None`
    /// when empty or `q` is not in [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Most negative first: the negative store from its highest magnitude down.
        for (key, count) in self.negative.buckets().rev() {
            seen += count;
            if seen > rank {
                return Some(-value_of(key));
            }
        }
        seen += self.zeros;
        if seen > rank {
            return Some(0.0);
        }
        for (key, count) in self.positive.buckets() {
            seen += count;
            if seen > rank {
                return Some(value_of(key));
            }
        }
        // Unreachable when the counts add up; the largest bucket is the right answer for rank n − 1.
        self.positive.highest().map(value_of).or(self.negative.buckets().next().map(|(k, _)| -value_of(k)))
    }

    /// Heap memory held (bytes), for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.positive.heap_bytes() + self.negative.heap_bytes()
    }

    /// The sketch's stored form: version 1, then varints (zeros; per store, positive then negative: zigzag offset,
    /// bucket count, counts). The one encoder; [`Sketch::decode`] is the one decoder.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        put_varint(out, self.zeros);
        for store in [&self.positive, &self.negative] {
            put_varint(out, zigzag(store.offset));
            put_varint(out, store.counts.len() as u64);
            for &c in &store.counts {
                put_varint(out, c);
            }
        }
    }

    /// Reads what [`Sketch::encode`] wrote, checking every bound (stored bytes are input like any other).
    pub fn decode(mut bytes: &[u8]) -> Result<Sketch, SketchDecodeError> {
        let version = *bytes.first().ok_or(SketchDecodeError::Truncated)?;
        if version != 1 {
            return Err(SketchDecodeError::UnknownVersion(version));
        }
        bytes = &bytes[1..];
        let zeros = get_varint(&mut bytes)?;
        let mut stores = [Store::default(), Store::default()];
        for store in &mut stores {
            let offset = unzigzag(get_varint(&mut bytes)?).ok_or(SketchDecodeError::KeyOutOfRange)?;
            let len = get_varint(&mut bytes)?;
            if len > MAX_BUCKETS as u64 {
                return Err(SketchDecodeError::TooManyBuckets(len));
            }
            if offset.checked_add(len as i32).is_none() {
                return Err(SketchDecodeError::KeyOutOfRange);
            }
            let counts = (0..len).map(|_| get_varint(&mut bytes)).collect::<Result<Vec<u64>, _>>()?;
            *store = Store { offset, counts };
        }
        if !bytes.is_empty() {
            return Err(SketchDecodeError::TrailingBytes(bytes.len()));
        }
        let [positive, negative] = stores;
        Ok(Sketch { zeros, positive, negative })
    }
}

fn zigzag(v: i32) -> u64 {
    ((v << 1) ^ (v >> 31)) as u32 as u64
}

fn unzigzag(v: u64) -> Option<i32> {
    let v = u32::try_from(v).ok()?;
    Some(((v >> 1) as i32) ^ -((v & 1) as i32))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Result<u64, SketchDecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or(SketchDecodeError::Truncated)?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(SketchDecodeError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sketch_of(values: &[f64]) -> Sketch {
        let mut s = Sketch::default();
        values.iter().for_each(|v| s.add_value(*v));
        s
    }

    /// The value of rank ⌊q (n − 1)⌋.
    fn exact(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn within_accuracy(estimate: f64, exact: f64) -> bool {
        (estimate - exact).abs() <= RELATIVE_ACCURACY * exact.abs() * (1.0 + 1e-9)
    }

    #[test]
    fn known_quantiles_of_one_to_a_thousand() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = sketch_of(&values);
        for (name, q) in NAMED_QUANTILES {
            let (est, want) = (s.quantile(q).unwrap(), exact(&values, q));
            assert!(within_accuracy(est, want), "{name}: {est} vs {want}");
        }
        assert_eq!(s.quantile(1.5), None);
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn zeros_and_negatives_keep_their_order() {
        let s = sketch_of(&[-5.0, 0.0, -0.0, 3.0, -100.0]);
        assert!(within_accuracy(s.quantile(0.0).unwrap(), -100.0));
        assert!(within_accuracy(s.quantile(0.25).unwrap(), -5.0));
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!(within_accuracy(s.quantile(1.0).unwrap(), 3.0));
    }

    #[test]
    fn a_store_never_exceeds_its_bucket_limit() {
        // Values from 1e-300 to 1e300 would need ~68 000 buckets.
        let values: Vec<f64> = (-300..=300).map(|e| 10f64.powi(e)).collect();
        let s = sketch_of(&values);
        assert!(s.positive.counts.len() <= MAX_BUCKETS);
        assert_eq!(s.count(), values.len() as u64);
        // The top of the range keeps its guarantee.
        assert!(within_accuracy(s.quantile(1.0).unwrap(), 1e300));
        assert!(within_accuracy(s.quantile(0.99).unwrap(), exact(&values, 0.99)));
        assert!(s.quantile(1.0).unwrap().is_finite());
        assert_eq!(sketch_of(&[f64::MAX]).quantile(0.5), Some(f64::MAX));
    }

    #[test]
    fn corrupt_stored_bytes_are_errors_not_panics() {
        let mut bytes = Vec::new();
        sketch_of(&[1.0, 2.0, -3.0]).encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert!(Sketch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Sketch::decode(&longer), Err(SketchDecodeError::TrailingBytes(1)));
        assert_eq!(Sketch::decode(&[2]), Err(SketchDecodeError::UnknownVersion(2)));
        assert_eq!(Sketch::decode(&[1, 0, 0, 0xff, 0xff, 0x03]), Err(SketchDecodeError::TooManyBuckets(65535)));
    }

    fn values() -> impl Strategy<Value = Vec<f64>> {
        proptest::collection::vec(
            prop_oneof![
                4 => -1e6f64..1e6,
                2 => 0.001f64..10.0,
                1 => Just(0.0),
                1 => (-300i32..300, 1.0f64..10.0).prop_map(|(e, m)| m * 10f64.powi(e)),
                1 => (-300i32..300, 1.0f64..10.0).prop_map(|(e, m)| -m * 10f64.powi(e)),
            ],
            1..400,
        )
    }

    proptest! {
        /// Random values in random merge orders: the same sketch bit for bit, and every quantile within α of the
        /// exact one — where the values of the quantile's sign span less than γ^MAX_BUCKETS (the stated bound).
        #[test]
        fn quantiles_are_within_the_relative_error_in_any_merge_order(
            values in values(),
            seed in any::<u64>(),
            chunk in 1usize..50,
            q in 0.0f64..=1.0,
        ) {
            let whole = sketch_of(&values);
            let mut shuffled = values.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut merged = Sketch::default();
            for part in shuffled.chunks(chunk).rev() {
                merged.merge(&sketch_of(part));
            }
            prop_assert_eq!(&merged, &whole);
            let mut bytes = Vec::new();
            whole.encode(&mut bytes);
            prop_assert_eq!(&Sketch::decode(&bytes).unwrap(), &whole);

            let want = exact(&values, q);
            let est = whole.quantile(q).unwrap();
            let largest = values.iter().filter(|v| **v != 0.0 && (want > 0.0) == (**v > 0.0)).map(|v| v.abs()).fold(0.0, f64::max);
            let in_bound = want == 0.0 || want.abs() * GAMMA.powi(MAX_BUCKETS as i32 - 2) >= largest;
            if in_bound {
                prop_assert!(within_accuracy(est, want), "q {}: {} vs {}", q, est, want);
            }
        }

        /// Values within the bound (no folding): every named quantile within α of the exact one, always.
        #[test]
        fn named_quantiles_of_sensor_like_values_are_within_the_relative_error(
            values in proptest::collection::vec(prop_oneof![-1e9f64..1e9, 1e-6f64..1.0, Just(0.0)], 1..500),
        ) {
            let s = sketch_of(&values);
            for (name, q) in NAMED_QUANTILES {
                let (est, want) = (s.quantile(q).unwrap(), exact(&values, q));
                prop_assert!(within_accuracy(est, want), "{}: {} vs {}", name, est, want);
            }
        }

        /// Any bytes decode to a sketch or an error.
        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sketch::decode(&bytes);
        }
    }
}
