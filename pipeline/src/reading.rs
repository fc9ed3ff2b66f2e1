//! The reading: one sensor value of one device at one instant, and the batch that carries many of them.
//!
//! Readings never travel alone: the decoder produces a [`ReadingBatch`], the write-ahead log stores one batch per
//! record, and later stages consume batches. Inside a batch, sensor and device names are small integer indexes into
//! the batch's own name tables, so a row is 24 bytes of plain data and nothing per row is allocated.

use std::sync::Arc;

/// The device a reading belongs to when it names none.
pub const DEFAULT_DEVICE: &str = "default";

/// The longest device name accepted, in bytes.
pub const MAX_DEVICE_BYTES: usize = 128;

/// The sensors a Weir accepts unless configured otherwise (those of the system it replaces).
pub const DEFAULT_SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];

/// The configured set of sensor names; a reading naming any other sensor is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorSet {
    names: Arc<[Box<str>]>,
}

impl SensorSet {
    /// A set of the given names; duplicates are dropped, order kept.
    pub fn new<I, S>(names: I) -> Result<Self, InvalidSensorName>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Box<str>> = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(InvalidSensorName(name.to_owned()));
            }
            if !out.iter().any(|n| &**n == name) {
                out.push(name.into());
            }
        }
        if out.is_empty() {
            return Err(InvalidSensorName(String::new()));
        }
        if out.len() > u16::MAX as usize {
            return Err(InvalidSensorName("(too many sensors)".into()));
        }
        Ok(SensorSet { names: out.into() })
    }

    /// The index of `name` in this set, if it is a configured sensor.
    #[inline]
    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.names.iter().position(|n| &**n == name).map(|i| i as u16)
    }

    /// The name at `index`.
    pub fn name(&self, index: u16) -> Option<&str> {
        self.names.get(index as usize).map(|n| &**n)
    }

    /// All names, in index order.
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// The shared name table, as batches carry it.
    pub fn table(&self) -> Arc<[Box<str>]> {
        self.names.clone()
    }
}

impl Default for SensorSet {
    fn default() -> Self {
        SensorSet::new(DEFAULT_SENSORS).expect("default sensors are valid")
    }
}

/// A sensor name that cannot be configured.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid sensor name {0:?}: sensor names are 1 to 64 characters of ASCII letters, digits and '_', and at least one is needed"
)]
pub struct InvalidSensorName(pub String);

/// One reading inside a [`ReadingBatch`]: names are indexes into the batch's tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Index into [`ReadingBatch::sensors`].
    pub sensor: u16,
    /// Index into [`ReadingBatch::devices`].
    pub device: u32,
    /// Event time, microseconds since the Unix epoch, UTC.
    pub micros: i64,
    /// The reading's value; always finite.
    pub value: f64,
}

/// A batch of readings with its own name tables.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingBatch {
    /// Sensor names; rows refer to them by index.
    pub sensors: Arc<[Box<str>]>,
    /// Device names; rows refer to them by index. Built as readings are added, each name once.
    pub devices: Vec<Box<str>>,
    /// The readings, in arrival order.
    pub rows: Vec<Row>,
}

/// A reading with its names resolved, for tests, dumps and display.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OwnedReading {
    pub device: String,
    pub sensor: String,
    pub value: f64,
    /// Microseconds since the Unix epoch, UTC.
    pub micros: i64,
}

impl ReadingBatch {
    /// An empty batch whose rows name sensors of `sensors`.
    pub fn new(sensors: &SensorSet) -> Self {
        ReadingBatch { sensors: sensors.table(), devices: Vec::new(), rows: Vec::new() }
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch holds no reading.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The readings with names resolved.
    pub fn iter(&self) -> impl Iterator<Item = OwnedReading> + '_ {
        self.rows.iter().map(|r| OwnedReading {
            device: self.devices[r.device as usize].to_string(),
            sensor: self.sensors[r.sensor as usize].to_string(),
            value: r.value,
            micros: r.micros,
        })
    }

    /// Removes every reading, keeping the sensor table and allocations.
    pub fn clear(&mut self) {
        self.devices.clear();
        self.rows.clear();
    }

    /// Moves every row of `other` into `self`, remapping device indexes. Both must share the sensor table.
    pub fn append_batch(&mut self, other: &ReadingBatch, interner: &mut DeviceInterner) {
        debug_assert!(Arc::ptr_eq(&self.sensors, &other.sensors) || self.sensors == other.sensors);
        let map: Vec<u32> = other.devices.iter().map(|d| interner.intern(&mut self.devices, d)).collect();
        self.rows.extend(other.rows.iter().map(|r| Row { device: map[r.device as usize], ..*r }));
    }
}

/// Assigns batch-local indexes to device names. Most batches carry one or a few devices, so the last hit is
/// checked first and a linear scan follows; a map takes over for batches with many devices.
#[derive(Debug, Default)]
pub struct DeviceInterner {
    last: Option<u32>,
    map: hashbrown::HashMap<Box<str>, u32>,
    /// The (device index, sensor) pairs of the batch.
    series: SeriesBits,
}

impl DeviceInterner {
    /// The index of `name` in `devices`, adding it when new.
    #[inline]
    pub fn intern(&mut self, devices: &mut Vec<Box<str>>, name: &str) -> u32 {
        let found = self.find(devices, name);
        self.add_if_missing(devices, name, found)
    }

    /// The index of `name` in `devices`, if it is there.
    #[inline]
    pub fn find(&mut self, devices: &[Box<str>], name: &str) -> Option<u32> {
        if let Some(i) = self.last
            && devices.get(i as usize).is_some_and(|d| &**d == name)
        {
            return Some(i);
        }
        if devices.len() <= 8 {
            devices.iter().position(|d| &**d == name).map(|i| i as u32)
        } else {
            if self.map.len() != devices.len() {
                self.map = devices.iter().enumerate().map(|(i, d)| (d.clone(), i as u32)).collect();
            }
            self.map.get(name).copied()
        }
    }

    /// `found` (what [`Self::find`] said of `name`), or `name` added to `devices`.
    #[inline]
    pub fn add_if_missing(&mut self, devices: &mut Vec<Box<str>>, name: &str, found: Option<u32>) -> u32 {
        let index = found.unwrap_or_else(|| {
            devices.push(name.into());
            let i = (devices.len() - 1) as u32;
            if devices.len() > 9 {
                self.map.insert(name.into(), i);
            }
            i
        });
        self.last = Some(index);
        index
    }

    /// Forgets every name (call when the batch it serves is cleared).
    pub fn reset(&mut self) {
        self.last = None;
        self.map.clear();
        self.series.clear();
    }

    /// Whether the batch has a reading of device `device` (its index) and `sensor` already; `sensors` is the size
    /// of the sensor table.
    #[inline]
    pub fn has_series(&self, device: u32, sensor: u16, sensors: usize) -> bool {
        self.series.contains(device, sensor, sensors)
    }

    /// Notes that the batch has a reading of `device` (its index) and `sensor`.
    #[inline]
    pub fn add_series(&mut self, device: u32, sensor: u16, sensors: usize) {
        self.series.insert(device, sensor, sensors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sensors_are_the_replaced_systems() {
        let s = SensorSet::default();
        assert_eq!(s.index_of("speed"), Some(0));
        assert_eq!(s.index_of("location_longitude"), Some(5));
        assert_eq!(s.index_of("Speed"), None);
    }

    #[test]
    fn sensor_names_are_checked() {
        assert!(SensorSet::new(["ok_name", "bad name"]).is_err());
        assert!(SensorSet::new(Vec::<String>::new()).is_err());
        assert_eq!(SensorSet::new(["a", "b", "a"]).unwrap().names().len(), 2);
    }

    #[test]
    fn interner_gives_each_name_one_index() {
        let mut devices = Vec::new();
        let mut interner = DeviceInterner::default();
        let names: Vec<String> = (0..50).map(|i| format!("dev{}", i % 20)).collect();
        let ids: Vec<u32> = names.iter().map(|n| interner.intern(&mut devices, n)).collect();
        assert_eq!(devices.len(), 20);
        for (n, i) in names.iter().zip(ids) {
            assert_eq!(&*devices[i as usize], n.as_str());
        }
    }
}

/// A set of (device index, sensor) pairs of one batch, as bits: bit `sensor` of device `d` in word
/// `d * words + sensor / 64`, `words` from the size of the sensor table.
#[derive(Debug, Default)]
pub struct SeriesBits {
    bits: Vec<u64>,
    words: usize,
}

impl SeriesBits {
    /// Whether the pair is in the set (`sensors`: the size of the sensor table).
    #[inline]
    pub fn contains(&self, device: u32, sensor: u16, sensors: usize) -> bool {
        let words = sensors.div_ceil(64).max(1);
        words == self.words
            && self
                .bits
                .get(device as usize * words + usize::from(sensor) / 64)
                .is_some_and(|w| w & (1 << (sensor % 64)) != 0)
    }

    /// Adds the pair; whether it was new.
    #[inline]
    pub fn insert(&mut self, device: u32, sensor: u16, sensors: usize) -> bool {
        let words = sensors.div_ceil(64).max(1);
        if words != self.words {
            self.bits.clear();
            self.words = words;
        }
        let word = device as usize * words + usize::from(sensor) / 64;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let new = self.bits[word] & (1 << (sensor % 64)) == 0;
        self.bits[word] |= 1 << (sensor % 64);
        new
    }

    pub fn clear(&mut self) {
        self.bits.clear();
    }
}
