//! The reading: one sensor value of one device at one instant, and the batch that carries many of them.
//!
//! Readings never travel alone: the decoder produces a [`ReadingBatch`], the write-ahead log stores one batch per
//! record, and later stages consume batches. Inside a batch, sensor and device names are small integer indexes into
//! the batch's own name tables, so a row is 24 bytes of plain data and nothing per row is allocated.

use std::sync::Arc;

mod name_table;
pub use name_table::{NameTable, Names};

/// The device a reading belongs to when it names none.
pub const DEFAULT_DEVICE: &str = "default";

/// The longest device name accepted, in bytes.
pub const MAX_DEVICE_BYTES: usize = 128;

/// The sensors a Weir accepts unless configured otherwise (those of the system it replaces).
pub const DEFAULT_SENSORS: [&str; 6] =
    ["speed", "fuel", "revolution", "engine_temperature", "location_latitude", "location_longitude"];

/// The longest sensor name accepted under `--sensors any`, in bytes.
pub const MAX_SENSOR_BYTES: usize = 128;

/// The most distinct sensor names a process stores, and a batch names: rows refer to sensors by a 16-bit index.
pub const MAX_SENSORS: usize = u16::MAX as usize;

/// The sensor names a Weir accepts: a configured list (the default: the replaced system's six), or — `--sensors
/// any` — every name that follows the open rule ([`open_sensor_name_error`]), with `--max-series` bounding how many
/// series they start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorSet {
    /// `None`: any name that follows the open rule.
    listed: Option<Arc<[Box<str>]>>,
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
        if out.len() > MAX_SENSORS {
            return Err(InvalidSensorName("(too many sensors)".into()));
        }
        Ok(SensorSet { listed: Some(out.into()) })
    }

    /// The open set: any sensor name that follows the open rule.
    pub fn any() -> Self {
        SensorSet { listed: None }
    }

    /// The configured names, in their order; `None` for the open set.
    pub fn listed(&self) -> Option<&[Box<str>]> {
        self.listed.as_deref()
    }

    /// Whether a reading of sensor `name` may be stored; `Err` says why not, for the rejected line.
    pub fn check(&self, name: &str) -> Result<(), String> {
        match &self.listed {
            Some(listed) if listed.iter().any(|n| &**n == name) => Ok(()),
            Some(listed) => Err(format!(
                "unknown sensor {:?}; configured sensors: {} (start Weir with --sensors any to accept any sensor)",
                crate::decode::truncate(name, 64),
                listed.join(", ")
            )),
            None => open_sensor_name_error(name).map_or(Ok(()), Err),
        }
    }

    /// Where `name` sorts in answers that list sensors: a configured sensor by its place in the list, any other
    /// after them by name.
    pub fn sort_key<'a>(&self, name: &'a str) -> (usize, &'a str) {
        let place = self.listed.as_ref().and_then(|l| l.iter().position(|n| &**n == name));
        (place.unwrap_or(usize::MAX), name)
    }
}

/// Why `name` is not a sensor name under `--sensors any` (`None`: it is one). The open rule: 1 to
/// [`MAX_SENSOR_BYTES`] bytes of ASCII letters, digits, `_`, `.`, `-` and `:` — what Prometheus metric names, OTLP
/// names as Weir maps them, and line protocol's `measurement.field` use; nothing that needs quoting in a URL, SQL
/// string, CSV or file name.
pub fn open_sensor_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("sensor is empty".to_owned());
    }
    if name.len() > MAX_SENSOR_BYTES {
        return Some(format!("sensor is {} bytes long, the limit is {MAX_SENSOR_BYTES}", name.len()));
    }
    let bad = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':')))?;
    Some(format!(
        "sensor {:?} contains {bad:?}: sensor names are ASCII letters, digits, '_', '.', '-' and ':'",
        crate::decode::truncate(name, 64)
    ))
}

impl Default for SensorSet {
    fn default() -> Self {
        SensorSet::new(DEFAULT_SENSORS).expect("default sensors are valid")
    }
}

/// A sensor name that cannot be configured.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid sensor name {0:?}: sensor names are 1 to 64 characters of ASCII letters, digits and '_', and at least one is needed (or `any` alone, for any sensor)"
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadingBatch {
    /// Sensor names; rows refer to them by index. Built as readings are added, each name once (at most
    /// [`MAX_SENSORS`]).
    pub sensors: NameTable,
    /// Device names; rows refer to them by index. Built as readings are added, each name once.
    pub devices: NameTable,
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
    /// An empty batch.
    pub fn new() -> Self {
        ReadingBatch::default()
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

    /// Removes every reading, keeping allocations.
    pub fn clear(&mut self) {
        self.sensors.clear();
        self.devices.clear();
        self.rows.clear();
    }

    /// Moves every row of `other` into `self`, remapping sensor and device indexes (`interner` serves `self`);
    /// `Err` when the two batches name more than [`MAX_SENSORS`] sensors together (`self` is then unchanged).
    pub fn append_batch(&mut self, other: &ReadingBatch, interner: &mut DeviceInterner) -> Result<(), TooManySensors> {
        let new_sensors = other.sensors.iter().filter(|s| interner.find_sensor(&self.sensors, s).is_none()).count();
        if self.sensors.len() + new_sensors > MAX_SENSORS {
            return Err(TooManySensors);
        }
        let sensors: Vec<u16> = other
            .sensors
            .iter()
            .map(|s| {
                let found = interner.find_sensor(&self.sensors, s);
                interner.add_sensor_if_missing(&mut self.sensors, s, found).expect("counted above")
            })
            .collect();
        let devices: Vec<u32> = other.devices.iter().map(|d| interner.intern(&mut self.devices, d)).collect();
        self.rows.extend(other.rows.iter().map(|r| Row {
            sensor: sensors[usize::from(r.sensor)],
            device: devices[r.device as usize],
            ..*r
        }));
        Ok(())
    }
}

/// A batch would name more than [`MAX_SENSORS`] sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("one batch names at most {MAX_SENSORS} distinct sensors")]
pub struct TooManySensors;

/// Indexes into one name table of a batch. Most batches carry one or a few names, so the last hit is checked
/// first and a linear scan follows; a hash table takes over for tables of many names.
///
/// The hash table holds each name's index and hash, not a copy of the name: a batch of a thousand devices made a
/// thousand copies (and freed them with the batch), and grew its map from nothing by rehashing every name again,
/// ~5 % of the server's CPU at 400 k readings/s (`benches/RESULTS.md`).
#[derive(Debug, Default)]
struct NameIndex {
    last: Option<u32>,
    /// (hash of the name, its index in the table), for tables of more than [`NameIndex::SCANNED`] names.
    map: hashbrown::HashTable<(u64, u32)>,
    hasher: foldhash::fast::FixedState,
}

impl NameIndex {
    /// Tables of at most this many names are scanned rather than hashed.
    const SCANNED: usize = 8;
    /// Room the hash table starts with once it takes over (it grows by doubling beyond): a batch of many names
    /// has about a thousand (16 KiB, for the request's time); 256 still rehashed twice in every such batch.
    const FIRST_CAPACITY: usize = 1024;

    #[inline]
    fn hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    #[inline]
    fn find(&mut self, table: &NameTable, name: &str) -> Option<u32> {
        if let Some(i) = self.last
            && table.get(i as usize) == Some(name)
        {
            return Some(i);
        }
        if table.len() <= Self::SCANNED {
            return table.iter().position(|d| d == name).map(|i| i as u32);
        }
        if self.map.len() != table.len() {
            // The table was filled without this index (or has just passed the scanned size): index it all.
            self.map.clear();
            self.map.reserve(table.len().max(Self::FIRST_CAPACITY), |(hash, _)| *hash);
            for (i, d) in table.iter().enumerate() {
                let hash = self.hash(d);
                self.map.insert_unique(hash, (hash, i as u32), |(h, _)| *h);
            }
        }
        let hash = self.hash(name);
        self.map.find(hash, |(h, i)| *h == hash && &table[*i as usize] == name).map(|(_, i)| *i)
    }

    #[inline]
    fn add_if_missing(&mut self, table: &mut NameTable, name: &str, found: Option<u32>) -> u32 {
        let index = found.unwrap_or_else(|| {
            table.push(name);
            let i = (table.len() - 1) as u32;
            // One more than the scanned size: the next `find` indexes the whole table.
            if table.len() > Self::SCANNED + 1 {
                let hash = self.hash(name);
                self.map.insert_unique(hash, (hash, i), |(h, _)| *h);
            }
            i
        });
        self.last = Some(index);
        index
    }

    fn reset(&mut self) {
        self.last = None;
        self.map.clear();
    }
}

/// Assigns batch-local indexes to device and sensor names, and remembers the batch's series.
#[derive(Debug, Default)]
pub struct DeviceInterner {
    devices: NameIndex,
    sensors: NameIndex,
    /// The (device index, sensor) pairs of the batch.
    series: SeriesBits,
}

impl DeviceInterner {
    /// The index of `name` in `devices`, adding it when new.
    #[inline]
    pub fn intern(&mut self, devices: &mut NameTable, name: &str) -> u32 {
        let found = self.find(devices, name);
        self.add_if_missing(devices, name, found)
    }

    /// The index of `name` in `devices`, if it is there.
    #[inline]
    pub fn find(&mut self, devices: &NameTable, name: &str) -> Option<u32> {
        self.devices.find(devices, name)
    }

    /// `found` (what [`Self::find`] said of `name`), or `name` added to `devices`.
    #[inline]
    pub fn add_if_missing(&mut self, devices: &mut NameTable, name: &str, found: Option<u32>) -> u32 {
        self.devices.add_if_missing(devices, name, found)
    }

    /// The index of sensor `name` in `sensors`, if it is there.
    #[inline]
    pub fn find_sensor(&mut self, sensors: &NameTable, name: &str) -> Option<u16> {
        self.sensors.find(sensors, name).map(|i| i as u16)
    }

    /// `found` (what [`Self::find_sensor`] said of `name`), or `name` added to `sensors`; `Err` when the table
    /// holds [`MAX_SENSORS`] names already.
    #[inline]
    pub fn add_sensor_if_missing(
        &mut self,
        sensors: &mut NameTable,
        name: &str,
        found: Option<u16>,
    ) -> Result<u16, TooManySensors> {
        if found.is_none() && sensors.len() >= MAX_SENSORS {
            return Err(TooManySensors);
        }
        Ok(self.sensors.add_if_missing(sensors, name, found.map(u32::from)) as u16)
    }

    /// The index of sensor `name` in `sensors`, adding it when new.
    pub fn intern_sensor(&mut self, sensors: &mut NameTable, name: &str) -> Result<u16, TooManySensors> {
        let found = self.find_sensor(sensors, name);
        self.add_sensor_if_missing(sensors, name, found)
    }

    /// Forgets every name (call when the batch it serves is cleared).
    pub fn reset(&mut self) {
        self.devices.reset();
        self.sensors.reset();
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
        assert_eq!(s.listed().unwrap().len(), 6);
        assert!(s.check("speed").is_ok());
        assert!(s.check("location_longitude").is_ok());
        assert!(s.check("Speed").unwrap_err().contains("unknown sensor \"Speed\""));
        assert!(s.sort_key("speed") < s.sort_key("fuel"), "the configured order");
    }

    #[test]
    fn sensor_names_are_checked() {
        assert!(SensorSet::new(["ok_name", "bad name"]).is_err());
        assert!(SensorSet::new(Vec::<String>::new()).is_err());
        assert_eq!(SensorSet::new(["a", "b", "a"]).unwrap().listed().unwrap().len(), 2);
    }

    #[test]
    fn the_open_set_takes_names_that_follow_the_rule() {
        let any = SensorSet::any();
        for good in ["speed", "cpu.usage_idle", "http_requests_total", "node:load1", "a-b", &"x".repeat(128)] {
            assert!(any.check(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("has space", "contains ' '"),
            ("a/b", "contains '/'"),
            ("quote\"", "contains '\"'"),
            ("tempé", "contains 'é'"),
            (&"x".repeat(129), "129 bytes long"),
        ] {
            let e = any.check(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(any.sort_key("a") < any.sort_key("b"));
    }

    #[test]
    fn appended_batches_keep_each_rows_names() {
        let push = |batch: &mut ReadingBatch, interner: &mut DeviceInterner, sensor: &str, device: &str| {
            let sensor = interner.intern_sensor(&mut batch.sensors, sensor).unwrap();
            let device = interner.intern(&mut batch.devices, device);
            batch.rows.push(Row { sensor, device, micros: 1, value: 1.0 });
        };
        let (mut a, mut ia) = (ReadingBatch::new(), DeviceInterner::default());
        let (mut b, mut ib) = (ReadingBatch::new(), DeviceInterner::default());
        push(&mut a, &mut ia, "x", "d1");
        push(&mut b, &mut ib, "y", "d2");
        push(&mut b, &mut ib, "x", "d1");
        a.append_batch(&b, &mut ia).unwrap();
        let names: Vec<(String, String)> = a.iter().map(|r| (r.sensor, r.device)).collect();
        let expected = [("x", "d1"), ("y", "d2"), ("x", "d1")].map(|(s, d)| (s.to_owned(), d.to_owned()));
        assert_eq!(names, expected);
        assert_eq!(a.sensors.len(), 2);
    }

    proptest::proptest! {
        /// Any sequence of names (few or many distinct, sharing prefixes; a pattern repeated, as writers send a
        /// device's sensors in the same order), with resets between batches: each name gets one index per batch, the table holds each name
        /// once in first-seen order, and `find` sees exactly the names added — as a map from scratch says, on both
        /// sides of the scanned size.
        #[test]
        fn interned_names_match_a_model(
            batches in proptest::collection::vec((proptest::collection::vec(0u16..400, 0..300), 1usize..5), 1..4),
            alphabet in 1u16..400,
        ) {
            let mut interner = DeviceInterner::default();
            for (pattern, repeats) in batches {
                let batch = pattern.iter().copied().cycle().take(pattern.len() * repeats);
                let (mut table, mut model) = (NameTable::new(), std::collections::HashMap::new());
                for n in batch {
                    let name = format!("d{}", n % alphabet);
                    let want_found = model.get(&name).copied();
                    let found = interner.find(&table, &name);
                    proptest::prop_assert_eq!(found, want_found);
                    let index = interner.add_if_missing(&mut table, &name, found);
                    let next = model.len() as u32;
                    proptest::prop_assert_eq!(index, *model.entry(name.clone()).or_insert(next));
                    proptest::prop_assert_eq!(&table[index as usize], name.as_str());
                }
                proptest::prop_assert_eq!(table.len(), model.len());
                interner.reset();
            }
        }
    }

    #[test]
    fn interner_gives_each_name_one_index() {
        let mut devices = NameTable::new();
        let mut interner = DeviceInterner::default();
        let names: Vec<String> = (0..50).map(|i| format!("dev{}", i % 20)).collect();
        let ids: Vec<u32> = names.iter().map(|n| interner.intern(&mut devices, n)).collect();
        assert_eq!(devices.len(), 20);
        for (n, i) in names.iter().zip(ids) {
            assert_eq!(&devices[i as usize], n.as_str());
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
