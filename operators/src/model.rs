//! The data that flows through the statistics dataflow: small, fixed-size, integer-keyed records.
//!
//! Device and sensor names become 64-bit ids, [`DeviceId`] and [`SensorId`] (the first 8 bytes of the name's
//! SHA-256, identical in every process of a cluster and every version, so no shared dictionary is needed: a sensor
//! first written at one process has the same id at all of them). Names travel separately, in their own small
//! collection keyed by [`NameId`].

use serde::{Deserialize, Serialize};

/// Logical time of the dataflow: the WAL position of the record a reading came from.
pub type Time = u64;

/// A device, as the hash of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub u64);

/// The first 8 bytes of the SHA-256 of `name`, little-endian.
fn name_hash(name: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

impl DeviceId {
    /// The id of a device name: the first 8 bytes of its SHA-256, the same in every process and every version.
    ///
    /// A cryptographic hash, so that nobody can aim a name at another device's id: finding a name with a given id
    /// takes about 2^64 hashes. Two names of one's own that share an id take about 2^32 (a birthday search), so
    /// ingest also refuses a name whose id is taken by another (`weir_pipeline::devices::DeviceNames`). The
    /// unkeyed 64-bit hash used before had collisions anyone could compute.
    pub fn of(name: &str) -> Self {
        DeviceId(name_hash(name))
    }
}

/// A sensor, as the hash of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SensorId(pub u64);

impl SensorId {
    /// The id of a sensor name, made as a [`DeviceId`] is (and for the same reasons): with an open sensor set
    /// (`--sensors any`) no process can number sensors for the others, and a configured set must not depend on its
    /// order. Ingest refuses a sensor name whose id another name holds (`weir_pipeline::devices::DeviceNames`).
    pub fn of(name: &str) -> Self {
        SensorId(name_hash(name))
    }
}

/// What a name in the names collection names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NameId {
    Device(DeviceId),
    Sensor(SensorId),
}

/// One series: a sensor of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub device: DeviceId,
    pub sensor: SensorId,
}

/// A reading inside the dataflow. `seq` orders readings as they were written to the log (WAL position in the high
/// 32 bits, index inside the record in the low 32), which is what "first write wins" means.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Reading {
    pub series: SeriesKey,
    /// Event time, microseconds since the Unix epoch, UTC.
    pub micros: i64,
    pub value: f64,
    pub seq: u64,
}

impl Reading {
    /// The sequence number of the `index`-th reading of the WAL record at `position`.
    pub fn seq_of(position: u64, index: u32) -> u64 {
        (position << 32) | u64::from(index)
    }
}

// Readings are ordered by identity and arrival; the value's bits make the order total.
impl PartialEq for Reading {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Reading {}
impl PartialOrd for Reading {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Reading {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.series, self.micros, self.seq, self.value.to_bits()).cmp(&(
            other.series,
            other.micros,
            other.seq,
            other.value.to_bits(),
        ))
    }
}

/// The width of a tumbling event-time window, aligned to UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Width {
    Minute,
    QuarterHour,
    Hour,
    Day,
}

impl Width {
    pub const ALL: [Width; 4] = [Width::Minute, Width::QuarterHour, Width::Hour, Width::Day];

    /// The window length in microseconds.
    pub const fn micros(self) -> i64 {
        const MINUTE: i64 = 60_000_000;
        match self {
            Width::Minute => MINUTE,
            Width::QuarterHour => 15 * MINUTE,
            Width::Hour => 60 * MINUTE,
            Width::Day => 24 * 60 * MINUTE,
        }
    }

    /// The start of the window of this width that contains `micros`.
    pub fn start_of(self, micros: i64) -> i64 {
        micros.div_euclid(self.micros()) * self.micros()
    }

    /// The name used in the API: `1m`, `15m`, `1h`, `1d`.
    pub const fn name(self) -> &'static str {
        match self {
            Width::Minute => "1m",
            Width::QuarterHour => "15m",
            Width::Hour => "1h",
            Width::Day => "1d",
        }
    }

    pub fn parse(name: &str) -> Option<Width> {
        Width::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// One window of one series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub series: SeriesKey,
    pub width: Width,
    /// Window start, microseconds since the Unix epoch, UTC.
    pub start: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_utc_including_before_1970() {
        assert_eq!(Width::Day.start_of(86_400_000_000 + 5), 86_400_000_000);
        assert_eq!(Width::Minute.start_of(-1), -60_000_000);
        assert_eq!(Width::QuarterHour.start_of(16 * 60_000_000), 15 * 60_000_000);
        assert_eq!(Width::parse("15m"), Some(Width::QuarterHour));
        assert_eq!(Width::parse("0"), None);
    }

    #[test]
    fn device_ids_are_stable() {
        assert_eq!(DeviceId::of("truck-7"), DeviceId::of("truck-7"));
        assert_ne!(DeviceId::of("truck-7"), DeviceId::of("truck-8"));
        // SHA-256 of the empty string begins e3b0c442 98fc1c14: pinned, because every process of a cluster (and every
        // version that reads the same archive) must agree on it.
        assert_eq!(DeviceId::of(""), DeviceId(u64::from_le_bytes([0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14])));
    }

    /// Issue 16, 5: these two names shared one id under the unkeyed 64-bit hash used before.
    #[test]
    fn names_that_collided_before_have_their_own_ids() {
        assert_ne!(DeviceId::of("aéaéaaaéaéaa"), DeviceId::of("}qv.Xt>{}qv.Xt>{"));
    }

    #[test]
    fn seq_orders_by_position_then_index() {
        assert!(Reading::seq_of(2, 0) > Reading::seq_of(1, u32::MAX));
    }
}
