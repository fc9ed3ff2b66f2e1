//! A flush's readings grouped by UTC day and put in the archive's order, with names as numbers.
//!
//! Why: the flush used to make each reading an owned row (two `String`s) and sort the rows comparing strings; in a
//! profile at 400 k readings/s that was most of the archiver's CPU (allocation, `memcmp`, the merge sort: about a
//! fifth of the server's). Here a batch's names are numbered once per batch ([`Names`]), a row is 32 bytes of
//! plain data, and the sort compares the names' ranks — the same order as comparing the names, and as stable (equal
//! keys stay in write order), so the parts are byte for byte those the string sort made.

use weir_pipeline::reading::ReadingBatch;

use crate::names::Names;
use crate::part::{PartError, PartWriter, ROW_GROUP_ROWS, ReadingRef};

/// Microseconds in a UTC day.
const DAY_MICROS: i64 = 86_400_000_000;

/// One reading: device and sensor by their number in [`Names`] (by their rank once sorted).
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    sensor: u32,
    device: u32,
    micros: i64,
    value: f64,
    written: u64,
}

/// The readings of a flush, by UTC day (the day number: microseconds / a day's).
#[derive(Debug, Default)]
pub(super) struct DayRows {
    names: Names,
    days: Vec<(i64, Vec<Row>)>,
    /// Where the last row went: most rows of a flush share a day.
    last: usize,
}

impl DayRows {
    /// Adds the readings of `batch`, written at `written`, after those added before.
    pub fn add(&mut self, batch: &ReadingBatch, written: u64) {
        let sensors: Vec<u32> = batch.sensors.iter().map(|s| self.names.intern(s)).collect();
        let devices: Vec<u32> = batch.devices.iter().map(|d| self.names.intern(d)).collect();
        for row in &batch.rows {
            let slot = self.slot(row.micros.div_euclid(DAY_MICROS));
            self.days[slot].1.push(Row {
                sensor: sensors[usize::from(row.sensor)],
                device: devices[row.device as usize],
                micros: row.micros,
                value: row.value,
                written,
            });
        }
    }

    fn slot(&mut self, day: i64) -> usize {
        if self.days.get(self.last).is_some_and(|(d, _)| *d == day) {
            return self.last;
        }
        self.last = match self.days.iter().position(|(d, _)| *d == day) {
            Some(i) => i,
            None => {
                self.days.push((day, Vec::new()));
                self.days.len() - 1
            }
        };
        self.last
    }

    /// Encodes each day, in day order, as one Parquet part in the archive's order (sensor, device, timestamp; equal
    /// keys in write order) and hands it to `put` with its index, day number and number of readings.
    pub fn encode_each<E: From<PartError>>(
        self,
        mut put: impl FnMut(usize, i64, Vec<u8>, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let DayRows { names, mut days, .. } = self;
        let (ranks, by_rank) = names.ranked();
        let ranks_len = ranks.len();
        days.sort_by_key(|(day, _)| *day);
        for (i, (day, mut rows)) in days.into_iter().enumerate() {
            for row in &mut rows {
                row.sensor = ranks[row.sensor as usize];
                row.device = ranks[row.device as usize];
            }
            let rows = archive_order(rows, ranks_len);
            let mut writer = PartWriter::new()?;
            for chunk in rows.chunks(ROW_GROUP_ROWS) {
                writer.write(chunk.iter().map(|r| ReadingRef {
                    device: by_rank[r.device as usize],
                    sensor: by_rank[r.sensor as usize],
                    value: r.value,
                    micros: r.micros,
                    written: r.written,
                }))?;
            }
            put(i, day, writer.finish()?, rows.len() as u64)?;
        }
        Ok(())
    }
}

/// `rows` (names by rank, each below `ranks`) in the archive's order: what a stable sort by (sensor, device,
/// timestamp) gives — equal keys in the order given — made of two stable counting sorts (by device, then by sensor)
/// and a sort of each series' run by timestamp, which a series' readings mostly need none of (checked in one pass).
///
/// Why: the comparison sort of a flush's 100 000 rows was ~4 % of the server at 1 M readings/s (`drift::sort` and
/// its small sorts, in the archiver); a counting pass is one read and one write of each row.
fn archive_order(rows: Vec<Row>, ranks: usize) -> Vec<Row> {
    let by_device = counting_sort(rows, ranks, |r| r.device);
    let mut rows = counting_sort(by_device, ranks, |r| r.sensor);
    for series in rows.chunk_by_mut(|a, b| (a.sensor, a.device) == (b.sensor, b.device)) {
        if !series.is_sorted_by_key(|r| r.micros) {
            series.sort_by_key(|r| r.micros);
        }
    }
    rows
}

/// `rows` stably sorted by `key` (each below `keys`).
fn counting_sort(rows: Vec<Row>, keys: usize, key: impl Fn(&Row) -> u32) -> Vec<Row> {
    // next[k]: where the next row of key k goes.
    let mut next = vec![0usize; keys + 1];
    for row in &rows {
        next[key(row) as usize + 1] += 1;
    }
    for k in 1..next.len() {
        next[k] += next[k - 1];
    }
    let mut sorted = vec![Row::default(); rows.len()];
    for row in rows {
        let at = &mut next[key(&row) as usize];
        sorted[*at] = row;
        *at += 1;
    }
    sorted
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::archive::archived_readings;
    use crate::part::{sort_for_archive, write_parquet};
    use crate::test_support::{Input, batch_of};

    proptest! {
        /// The archive's order is the stable sort by (sensor, device, timestamp): any ranks, timestamps out of
        /// order and repeated.
        #[test]
        fn the_archive_order_is_the_stable_sort(
            keys in prop::collection::vec((0u32..6, 0u32..6, -3i64..4), 0..300),
        ) {
            let rows: Vec<Row> = keys
                .iter()
                .enumerate()
                .map(|(i, &(sensor, device, micros))| Row { sensor, device, micros, value: i as f64, written: 0 })
                .collect();
            let mut want = rows.clone();
            want.sort_by_key(|r| (r.sensor, r.device, r.micros));
            let got = archive_order(rows, 6);
            let order = |rows: &[Row]| rows.iter().map(|r| r.value as usize).collect::<Vec<_>>();
            prop_assert_eq!(order(&got), order(&want));
        }

        /// The parts are byte for byte those of owned rows sorted by their strings, day by day.
        #[test]
        fn parts_equal_those_of_the_string_sort(
            records in prop::collection::vec(
                prop::collection::vec((0u8..3, 0u16..4, -2i64..3, 0i64..5, -3i32..3), 1..20), 1..8),
        ) {
            let records: Vec<Vec<Input>> = records
                .iter()
                .map(|r| r.iter().map(|&(d, s, day, t, v)| (d, s, day * DAY_MICROS + t, f64::from(v))).collect())
                .collect();
            let mut rows = DayRows::default();
            let mut by_string: std::collections::BTreeMap<i64, Vec<_>> = Default::default();
            for (written, record) in records.iter().enumerate() {
                let batch = batch_of(record);
                rows.add(&batch, written as u64);
                for r in archived_readings(&batch, written as u64) {
                    by_string.entry(r.micros.div_euclid(DAY_MICROS)).or_default().push(r);
                }
            }
            let mut parts = Vec::new();
            rows.encode_each(|i, day, bytes, n| {
                parts.push((i, day, bytes, n));
                Ok::<(), PartError>(())
            })
            .unwrap();
            let want: Vec<_> = by_string
                .into_iter()
                .enumerate()
                .map(|(i, (day, mut readings))| {
                    sort_for_archive(&mut readings);
                    (i, day, write_parquet(&readings).unwrap(), readings.len() as u64)
                })
                .collect();
            prop_assert_eq!(parts, want);
        }
    }
}
