//! First write wins: a reading whose (device, sensor, timestamp) was already written is dropped, whatever its value
//! (the replaced system's `INSERT … ON CONFLICT DO NOTHING`).
//!
//! Readings are routed by device, so every reading of a device meets the same [`FirstWriteFilter`]. The operator
//! holds each logical time's readings until the input frontier has passed it, then admits them in time order and,
//! within a time, in write order (`seq`), so the result is the same for any number of workers.
//!
//! Memory is bounded by the *horizon*: per device, only keys within `horizon` of event time behind the newest
//! reading of that device are remembered (in a B-tree of `(timestamp, sensor)`, about 16–32 bytes per key).
//! A reading older than that is admitted without a check; if it was a duplicate, the live statistics count it
//! again (the archive's daily seal deduplicates exactly, whatever the age).

use std::collections::{BTreeSet, HashMap};

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::model::{DeviceId, Reading, Time};

/// The per-device memory of keys already written.
#[derive(Debug)]
pub struct FirstWriteFilter {
    horizon_micros: i64,
    devices: HashMap<DeviceId, DeviceKeys>,
}

#[derive(Debug, Default)]
struct DeviceKeys {
    newest: i64,
    keys: BTreeSet<(i64, u16)>,
}

impl FirstWriteFilter {
    /// A filter that is exact for duplicates within `horizon_micros` of event time behind each device's newest.
    pub fn new(horizon_micros: i64) -> Self {
        FirstWriteFilter { horizon_micros: horizon_micros.max(0), devices: HashMap::new() }
    }

    /// Whether `r` is the first reading with its key; remembers it.
    pub fn admit(&mut self, r: &Reading) -> bool {
        let device = self
            .devices
            .entry(r.series.device)
            .or_insert_with(|| DeviceKeys { newest: i64::MIN, keys: BTreeSet::new() });
        device.newest = device.newest.max(r.micros);
        let cutoff = device.newest.saturating_sub(self.horizon_micros);
        if r.micros < cutoff {
            return true;
        }
        let fresh = device.keys.insert((r.micros, r.series.sensor));
        // Forget keys past the horizon, in steps of an eighth of it so the cost is amortised.
        if let Some(&(oldest, _)) = device.keys.first()
            && oldest < cutoff.saturating_sub(self.horizon_micros / 8)
        {
            device.keys = device.keys.split_off(&(cutoff, 0));
        }
        fresh
    }

    /// Keys remembered, over all devices.
    pub fn remembered(&self) -> usize {
        self.devices.values().map(|d| d.keys.len()).sum()
    }
}

/// `dedup_first_write`: readings in (as written, possibly with duplicates), each key's first-written reading out.
///
/// In: a stream of [`Reading`]s at the time of their WAL record. Out: a collection of the readings that are the first
/// of their (device, sensor, timestamp), each with multiplicity +1 at its record's time. Nothing is ever retracted.
pub fn dedup_first_write<'scope>(
    readings: Stream<'scope, Time, Vec<Reading>>,
    horizon_micros: i64,
) -> VecCollection<'scope, Time, Reading, isize> {
    let by_device = Exchange::new(|r: &Reading| r.series.device.0);
    readings
        .unary_frontier::<CapacityContainerBuilder<Vec<(Reading, Time, isize)>>, _, _, _>(
            by_device,
            "DedupFirstWrite",
            move |_capability, _info| {
                let mut filter = FirstWriteFilter::new(horizon_micros);
                let mut stash: Vec<(Capability<Time>, Vec<Reading>)> = Vec::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        if let Some(cap) = cap.retain_least(output.output_index()) {
                            let mut readings = Vec::new();
                            for batch in data {
                                readings.append(batch);
                            }
                            stash.push((cap, readings));
                        }
                    });
                    // Admit complete times in time order, and within a time in write order.
                    let (mut ready, waiting): (Vec<_>, Vec<_>) =
                        stash.drain(..).partition(|(cap, _)| !frontier.frontier().less_equal(cap.time()));
                    stash = waiting;
                    ready.sort_by_key(|(cap, _)| *cap.time());
                    for (cap, mut readings) in ready {
                        readings.sort_unstable_by_key(|r| r.seq);
                        let time = *cap.time();
                        let mut session = output.session(&cap);
                        for r in readings {
                            if filter.admit(&r) {
                                session.give((r, time, 1isize));
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SeriesKey;

    fn r(device: u64, sensor: u16, micros: i64, seq: u64) -> Reading {
        Reading { series: SeriesKey { device: DeviceId(device), sensor }, micros, value: seq as f64, seq }
    }

    #[test]
    fn first_write_wins_per_device_sensor_and_timestamp() {
        let mut f = FirstWriteFilter::new(1_000);
        assert!(f.admit(&r(1, 0, 100, 1)));
        assert!(!f.admit(&r(1, 0, 100, 2)), "same key, later write");
        assert!(f.admit(&r(1, 1, 100, 3)), "other sensor");
        assert!(f.admit(&r(2, 0, 100, 4)), "other device");
        assert!(f.admit(&r(1, 0, 101, 5)), "other timestamp");
    }

    /// The operator in a 3-worker dataflow: readings fed by every worker, duplicates in later records (and inside a
    /// record) dropped, the first write kept, whatever worker held it.
    #[test]
    fn operator_keeps_the_first_write_across_workers() {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::Probe;
        use timely::dataflow::{InputHandleVec, ProbeHandle};

        let admitted = Arc::new(Mutex::new(Vec::new()));
        let sink = admitted.clone();
        timely::execute(timely::Config::process(3), move |worker| {
            let mut input = InputHandleVec::new();
            let probe = ProbeHandle::new();
            let sink = sink.clone();
            worker.dataflow(|scope| {
                dedup_first_write(input.to_stream(scope), 1_000_000)
                    .inspect(move |(r, time, diff)| sink.lock().unwrap().push((r.seq, r.value, *time, *diff)))
                    .inner
                    .probe_with(&probe);
            });
            // Records 1..=6; worker `position % 3` feeds each, as the runtime does. Every record repeats the key
            // (device 7, sensor 0, t=50) and has one fresh key of its own.
            for position in 1..=6u64 {
                input.advance_to(position);
                if position % 3 == worker.index() as u64 {
                    let dup = r(7, 0, 50, Reading::seq_of(position, 0));
                    let fresh = r(position, 1, 60, Reading::seq_of(position, 1));
                    let dup_again = r(7, 0, 50, Reading::seq_of(position, 2));
                    for mut reading in [dup, fresh, dup_again] {
                        reading.value = position as f64;
                        input.send(reading);
                    }
                }
            }
            input.advance_to(7);
            while probe.less_than(&7) {
                worker.step();
            }
        })
        .unwrap();
        let mut out = admitted.lock().unwrap().clone();
        out.sort_by_key(|(seq, ..)| *seq);
        let dup_key: Vec<_> = out.iter().filter(|(seq, ..)| seq & 0xffff_ffff == 0).collect();
        assert_eq!(dup_key.len(), 1, "{out:?}");
        assert_eq!(*dup_key[0], (Reading::seq_of(1, 0), 1.0, 1, 1), "the first write, from record 1");
        assert_eq!(out.len(), 7, "one duplicated key + six fresh ones: {out:?}");
    }

    #[test]
    fn memory_is_bounded_by_the_horizon() {
        let mut f = FirstWriteFilter::new(1_000);
        for t in 0..100_000 {
            assert!(f.admit(&r(1, 0, t, t as u64)));
        }
        assert!(f.remembered() <= 1_126, "remembered {}", f.remembered());
        // Within the horizon, duplicates are still caught.
        assert!(!f.admit(&r(1, 0, 99_500, 1)));
        // Beyond it, a reading is admitted unchecked (documented).
        assert!(f.admit(&r(1, 0, 10, 2)));
    }
}
