//! The k-way merge of a day's parts: every part is already in the archive's order (sensor, device, timestamp; equal
//! keys in write order), so the day in that order is a merge of the parts, read a batch at a time — never the
//! whole day in memory.
//!
//! Why: holding the day's rows to sort them made a seal's memory grow with the day (~60 bytes per reading: 99 MiB
//! for 1.7 M readings, resealed every few seconds while late data came — the soak's RSS swings). The merge holds one
//! decoded batch per part and the names it has met; what grows with the day is only what the caller keeps of the
//! output (the compressed files).
//!
//! Among rows of equal key the order is the seal's rule: the sealed file's row first, then by write time, then in
//! the order of `parts` and of rows within a part. The first row of each key is the first write; the others are
//! dropped here. Within a part, rows of equal key are in its log's order, whose write times only grow (the log's
//! clock), so a part is in the order the merge needs: (sensor, device, timestamp, write time). A part out of that
//! order would make the rule silently wrong, so each cursor checks its part as it reads and the merge stops with
//! [`PartError::OutOfOrder`].

use std::cmp::Ordering;

use arrow::array::RecordBatch;

pub(crate) use crate::names::Names;
use crate::part::{PartColumns, PartError, part_batches};

/// A row of the merged day: names by their number in [`Names`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MergedRow {
    pub sensor: u32,
    pub device: u32,
    pub micros: i64,
    pub value: f64,
    pub written: u64,
    /// From a part written after the day's last seal.
    pub late: bool,
}

/// One row of a part, decoded.
#[derive(Debug, Clone, Copy)]
struct PartRow {
    sensor: u32,
    device: u32,
    micros: i64,
    value: f64,
    written: u64,
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, PartError>>>;

/// A part being read: its current batch, decoded, and where in it the merge is.
struct PartCursor {
    batches: Batches,
    rows: Vec<PartRow>,
    at: usize,
    /// Rows of the part before `rows`.
    passed: u64,
    late: bool,
    sealed: bool,
}

impl PartCursor {
    fn head(&self) -> &PartRow {
        &self.rows[self.at]
    }

    /// The head's row number within its part.
    fn row(&self) -> u64 {
        self.passed + self.at as u64
    }

    /// Moves to the next row, checking the part's order; false when the part is done.
    fn advance(&mut self, names: &mut Names) -> Result<bool, PartError> {
        let previous = *self.head();
        self.at += 1;
        if self.at == self.rows.len() && !self.load(names)? {
            return Ok(false);
        }
        let next = self.head();
        let order = names
            .cmp(next.sensor, previous.sensor)
            .then_with(|| names.cmp(next.device, previous.device))
            .then(next.micros.cmp(&previous.micros))
            .then(next.written.cmp(&previous.written));
        if order == Ordering::Less {
            return Err(PartError::OutOfOrder { row: self.row() });
        }
        Ok(true)
    }

    /// Decodes the next non-empty batch into `rows`; false when there is none.
    fn load(&mut self, names: &mut Names) -> Result<bool, PartError> {
        self.passed += self.rows.len() as u64;
        self.rows.clear();
        self.at = 0;
        for batch in self.batches.by_ref() {
            let batch = batch?;
            let part = PartColumns::of(&batch)?;
            // A dictionary is per row group: interned once per name and batch, not per row.
            let number = |names: &mut Names, array: &arrow::array::StringArray| -> Vec<u32> {
                array.iter().map(|name| names.intern(name.unwrap_or_default())).collect()
            };
            let (sensors, devices) = (number(names, part.sensor_names), number(names, part.device_names));
            self.rows.extend((0..batch.num_rows()).map(|i| PartRow {
                sensor: sensors[part.sensor_key(i) as usize],
                device: devices[part.device_key(i) as usize],
                micros: part.times.value(i),
                value: part.values.value(i),
                written: part.written(i),
            }));
            if !self.rows.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A part to merge: its bytes, whether it came after the day's last seal, whether it is the day's sealed file.
pub(crate) struct MergeInput {
    pub bytes: bytes::Bytes,
    pub late: bool,
    pub sealed: bool,
}

/// A failed merge: which input (by index) and why.
pub(crate) type MergeError = (usize, PartError);

/// The merge of a day's parts: [`DayMerge::next`] gives the first write of each key, in the archive's order.
pub(crate) struct DayMerge {
    cursors: Vec<PartCursor>,
    /// A binary min-heap of the cursors with rows left, by their head row.
    heap: Vec<usize>,
    names: Names,
    /// The key of the row given last: later rows of it are later writes.
    last: Option<(u32, u32, i64)>,
}

impl DayMerge {
    /// A merge of `inputs`, in the order that breaks ties between equal write times.
    pub fn new(inputs: impl IntoIterator<Item = MergeInput>) -> Result<DayMerge, MergeError> {
        let mut names = Names::default();
        let mut cursors = Vec::new();
        let mut heap = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let batches: Batches = Box::new(part_batches(input.bytes).map_err(|e| (i, e))?);
            let mut cursor =
                PartCursor { batches, rows: Vec::new(), at: 0, passed: 0, late: input.late, sealed: input.sealed };
            if cursor.load(&mut names).map_err(|e| (i, e))? {
                heap.push(i);
            }
            cursors.push(cursor);
        }
        let mut merge = DayMerge { cursors, heap, names, last: None };
        for i in (0..merge.heap.len() / 2).rev() {
            merge.sift_down(i);
        }
        Ok(merge)
    }

    /// The names the rows given so far use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The next first write, in the archive's order; `None` when every part is read.
    pub fn next_row(&mut self) -> Result<Option<MergedRow>, MergeError> {
        loop {
            let Some(&top) = self.heap.first() else { return Ok(None) };
            let cursor = &self.cursors[top];
            let head = *cursor.head();
            let row = MergedRow {
                sensor: head.sensor,
                device: head.device,
                micros: head.micros,
                value: head.value,
                written: head.written,
                late: cursor.late,
            };
            if !self.cursors[top].advance(&mut self.names).map_err(|e| (top, e))? {
                let last = self.heap.pop().unwrap_or(top);
                if let Some(first) = self.heap.first_mut() {
                    *first = last;
                }
            }
            self.sift_down(0);
            let key = (head.sensor, head.device, head.micros);
            if self.last != Some(key) {
                self.last = Some(key);
                return Ok(Some(row));
            }
        }
    }

    /// Whether cursor `a`'s head comes before cursor `b`'s.
    fn before(&self, a: usize, b: usize) -> bool {
        let (ca, cb) = (&self.cursors[a], &self.cursors[b]);
        let (x, y) = (ca.head(), cb.head());
        self.names
            .cmp(x.sensor, y.sensor)
            .then_with(|| self.names.cmp(x.device, y.device))
            .then(x.micros.cmp(&y.micros))
            .then((!ca.sealed).cmp(&!cb.sealed))
            .then(x.written.cmp(&y.written))
            .then(a.cmp(&b))
            == Ordering::Less
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if left < n && self.before(self.heap[left], self.heap[least]) {
                least = left;
            }
            if right < n && self.before(self.heap[right], self.heap[least]) {
                least = right;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::part::{ArchivedReading, sort_for_archive, write_parquet};

    fn merge_all(parts: &[(Vec<ArchivedReading>, bool)]) -> Result<Vec<ArchivedReading>, MergeError> {
        let inputs = parts.iter().map(|(rows, sealed)| MergeInput {
            bytes: bytes::Bytes::from(write_parquet(rows).unwrap()),
            late: false,
            sealed: *sealed,
        });
        let mut merge = DayMerge::new(inputs)?;
        let mut out = Vec::new();
        while let Some(row) = merge.next_row()? {
            let names = merge.names();
            out.push(ArchivedReading {
                device: names.get(row.device).to_owned(),
                sensor: names.get(row.sensor).to_owned(),
                value: row.value,
                micros: row.micros,
                written: row.written,
            });
        }
        Ok(out)
    }

    /// From scratch: every row of every part, sorted by key, then the sealed file's rows first, then write time,
    /// then part and row order (a stable sort of the rows in part order); the first row of each key.
    fn model(parts: &[(Vec<ArchivedReading>, bool)]) -> Vec<ArchivedReading> {
        let mut all: Vec<(bool, &ArchivedReading)> =
            parts.iter().flat_map(|(rows, sealed)| rows.iter().map(move |r| (*sealed, r))).collect();
        all.sort_by(|(sa, a), (sb, b)| {
            (&a.sensor, &a.device, a.micros, !sa, a.written).cmp(&(&b.sensor, &b.device, b.micros, !sb, b.written))
        });
        let mut out: Vec<ArchivedReading> = Vec::new();
        for (_, r) in all {
            if out.last().is_none_or(|l| (&l.sensor, &l.device, l.micros) != (&r.sensor, &r.device, r.micros)) {
                out.push(r.clone());
            }
        }
        out
    }

    /// A part as a log writes it: readings in log order, write times growing from `first_written` (parts of
    /// different processes overlap in write time), then sorted into the archive's order.
    fn part() -> impl Strategy<Value = Vec<ArchivedReading>> {
        // Few names and times, chosen to collide: equal keys across and within parts, names that share prefixes.
        let name = prop::sample::select(vec!["a", "ab", "b", "default", "é", "a\u{0}"]);
        let reading = (name.clone(), name, -3i64..4, 0u64..2, any::<f64>());
        (0u64..6, prop::collection::vec(reading, 0..40)).prop_map(|(first_written, readings)| {
            let mut written = first_written;
            let mut rows: Vec<ArchivedReading> = readings
                .into_iter()
                .map(|(device, sensor, micros, step, value)| {
                    written += step;
                    ArchivedReading { device: device.into(), sensor: sensor.into(), value, micros, written }
                })
                .collect();
            sort_for_archive(&mut rows);
            rows
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_support::cases_or(256)))]

        /// Any parts (each in the archive's order; at most one the sealed file, first): the merge gives exactly the
        /// model's rows — the first write of each key, in the archive's order.
        #[test]
        fn the_merge_keeps_what_a_sort_of_every_row_keeps(
            parts in prop::collection::vec(part(), 0..6),
            sealed_first in any::<bool>(),
        ) {
            let parts: Vec<(Vec<ArchivedReading>, bool)> =
                parts.into_iter().enumerate().map(|(i, rows)| (rows, sealed_first && i == 0)).collect();
            let merged = merge_all(&parts).unwrap();
            let expected = model(&parts);
            // Values compared by bits (NaN, -0.0).
            let bits = |rows: &[ArchivedReading]| -> Vec<_> {
                rows.iter().map(|r| (r.sensor.clone(), r.device.clone(), r.micros, r.written, r.value.to_bits())).collect()
            };
            prop_assert_eq!(bits(&merged), bits(&expected));
        }
    }

    #[test]
    fn a_part_out_of_order_stops_the_merge_and_says_which_row() {
        let r = |sensor: &str, micros, written| ArchivedReading {
            device: "d".into(),
            sensor: sensor.into(),
            value: 1.0,
            micros,
            written,
        };
        let sorted = vec![r("a", 1, 0), r("b", 1, 0)];
        for unsorted in
            [vec![r("a", 5, 0), r("a", 2, 0)], vec![r("b", 5, 0), r("a", 5, 0)], vec![r("a", 5, 2), r("a", 5, 1)]]
        {
            match merge_all(&[(sorted.clone(), false), (unsorted.clone(), false)]) {
                Err((1, PartError::OutOfOrder { row: 1 })) => {}
                other => panic!("expected {unsorted:?}'s row 1 out of order, got {other:?}"),
            }
        }
    }
}
