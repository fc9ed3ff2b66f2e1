//! Fixed workloads for the instruction-count regression guard (`benches/guard.sh`): one per stage that every reading
//! crosses — decoding an NDJSON body, one round of the statistics dataflow, writing an archive part.
//!
//! Why instruction counts: wall-clock timings on a shared 2-core machine move by tens of percent from run to run;
//! the instructions a fixed workload executes (callgrind) move by well under one, so a 10 % rise is a real
//! regression. Each stage runs in a `measured_*` function, never inlined, and the script tells callgrind to count
//! only inside those (`--toggle-collect`), so building the inputs is not measured.
//!
//! `weir-guard STAGE` runs one stage once (`decode`, `dataflow-round`, `part-write`); `weir-guard` runs all three.

use std::hint::black_box;

use weir_format::{ArchivedReading, sort_for_archive, write_parquet};
use weir_operators::model::{DeviceId, NameId, Reading, SensorId, SeriesKey};
use weir_operators::stats::{StatsDataflow, stats_dataflow};
use weir_operators::{LiveWindows, Time};
use weir_pipeline::decode::Decoder;
use weir_pipeline::ingest::{BodyDecoder, DecodeLimits};
use weir_pipeline::reading::SensorSet;

/// Readings per workload: enough that per-call overheads do not dominate, few enough for valgrind in seconds.
const READINGS: usize = 50_000;
/// Devices the readings are spread over (6 sensors each).
const DEVICES: usize = 500;
const SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];
/// 2026-11-18T00:00:00Z, in microseconds.
const START: i64 = 1_795_046_400_000_000;

fn main() {
    let all = ["decode", "dataflow-round", "part-write"];
    let stage = std::env::args().nth(1);
    let stages: Vec<&str> = match stage.as_deref() {
        None => all.to_vec(),
        Some(one) if all.contains(&one) => vec![one],
        Some(other) => {
            eprintln!("weir-guard: unknown stage {other:?}; use decode, dataflow-round or part-write");
            std::process::exit(2);
        }
    };
    for stage in stages {
        match stage {
            "decode" => println!("decode: {} readings", measured_decode(&ndjson_body())),
            "dataflow-round" => println!("dataflow-round: {} windows", dataflow_round()),
            _ => println!("part-write: {} bytes", measured_part_write(&archived())),
        }
    }
}

/// `READINGS` readings as an ingest body, one line each, in arrival order (time-major, devices interleaved).
fn ndjson_body() -> String {
    let mut out = String::with_capacity(READINGS * 110);
    for n in 0..READINGS {
        let (tick, series) = (n / (DEVICES * SENSORS.len()), n % (DEVICES * SENSORS.len()));
        let millis = START / 1000 + tick as i64 * 1000 + (n % 7) as i64;
        let (secs, ms) = (millis / 1000, millis % 1000);
        let time = format_rfc3339(secs, ms);
        out.push_str(&format!(
            "{{\"device\": \"vehicle-{:05}\", \"sensor\": \"{}\", \"value\": {}.{}, \"timestamp\": \"{time}\"}}\n",
            series / SENSORS.len(),
            SENSORS[series % SENSORS.len()],
            n % 1000,
            n % 10
        ));
    }
    out
}

/// `secs` and `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (within 2026-11-18, the only day used).
fn format_rfc3339(secs: i64, ms: i64) -> String {
    let of_day = secs.rem_euclid(86_400);
    format!("2026-11-18T{:02}:{:02}:{:02}.{ms:03}Z", of_day / 3600, of_day / 60 % 60, of_day % 60)
}

/// The decoder of `POST /ingest`, fed the body in 64 KiB chunks as the HTTP server hands them over.
#[inline(never)]
fn measured_decode(body: &str) -> usize {
    let mut decoder = BodyDecoder::new(Decoder::new(SensorSet::default()), DecodeLimits::default());
    let mut rows = 0;
    for chunk in body.as_bytes().chunks(64 << 10) {
        decoder.feed(chunk);
        while let Some(batch) = decoder.take_full_batch() {
            rows += black_box(batch).len();
        }
    }
    decoder.finish();
    rows + decoder.take_batch().map_or(0, |b| b.len())
}

/// The statistics dataflow (deduplication, live windows, latest) of one worker, given `READINGS` readings at one
/// time, stepped until its probe has passed that time.
fn dataflow_round() -> usize {
    timely::execute_directly(move |worker| {
        let readings: Vec<Reading> = (0..READINGS)
            .map(|n| {
                let (tick, series) = (n / (DEVICES * SENSORS.len()), n % (DEVICES * SENSORS.len()));
                Reading {
                    series: SeriesKey {
                        device: DeviceId((series / SENSORS.len()) as u64),
                        sensor: SensorId((series % 6) as u64),
                    },
                    micros: START + tick as i64 * 1_000_000,
                    value: (n % 1000) as f64 * 0.25,
                    seq: Reading::seq_of(1, n as u32),
                }
            })
            .collect();
        let mut inputs = worker.dataflow(|scope| {
            let StatsDataflow { readings, names, windows, probe, .. } =
                stats_dataflow(scope, 3_600_000_000, 1, (LiveWindows::new(Some(48 * 3_600_000_000)), 0), |_| {});
            Inputs { readings, names, windows, probe }
        });
        measured_dataflow_round(worker, &mut inputs, readings)
    })
}

/// What the round feeds and reads of the dataflow.
struct Inputs {
    readings: timely::dataflow::InputHandleVec<Time, Reading>,
    names: differential_dataflow::input::InputSession<Time, (NameId, String), isize>,
    windows: weir_operators::SharedLiveWindows,
    probe: timely::dataflow::ProbeHandle<Time>,
}

#[inline(never)]
fn measured_dataflow_round(
    worker: &mut timely::worker::Worker,
    dataflow: &mut Inputs,
    readings: Vec<Reading>,
) -> usize {
    let time: Time = 1;
    for reading in readings {
        dataflow.readings.send(reading);
    }
    dataflow.readings.advance_to(time + 1);
    dataflow.names.advance_to(time + 1);
    dataflow.names.flush();
    worker.step_while(|| dataflow.probe.less_than(&(time + 1)));
    dataflow.windows.borrow().len()
}

/// `READINGS` readings as the archiver holds them before a flush, in the archive's order.
fn archived() -> Vec<ArchivedReading> {
    let mut rows: Vec<ArchivedReading> = (0..READINGS)
        .map(|n| {
            let (tick, series) = (n / (DEVICES * SENSORS.len()), n % (DEVICES * SENSORS.len()));
            ArchivedReading {
                device: format!("vehicle-{:05}", series / SENSORS.len()),
                sensor: SENSORS[series % SENSORS.len()].to_owned(),
                value: (n % 1000) as f64 * 0.25,
                micros: START + tick as i64 * 1_000_000,
                written: 3_600_000_000_000_000 + n as u64,
            }
        })
        .collect();
    sort_for_archive(&mut rows);
    rows
}

/// One archive part (Parquet, zstd, page statistics) of those readings.
#[inline(never)]
fn measured_part_write(rows: &[ArchivedReading]) -> usize {
    write_parquet(rows).map(|bytes| bytes.len()).unwrap_or(0)
}
