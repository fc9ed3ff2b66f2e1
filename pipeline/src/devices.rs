//! Which name owns which device or sensor id, so that no two names ever share state.
//!
//! Inside the dataflow a device is its [`DeviceId`] and a sensor its [`SensorId`], 64-bit hashes of their names. A
//! cryptographic hash makes aiming a name at another's id infeasible, but two names that share an id can still be
//! found by a birthday search (about 2^32 hashes). [`DeviceNames`] remembers the name of every id this process has
//! stored or read from its log and archive; ingest refuses a new name whose id another name holds, so the two can
//! never merge.
//!
//! It also counts the **series** (device, sensor) stored, and refuses a reading that would start a new one beyond
//! `--max-series` ([`DeviceNames::claim_series`]): a client that sends a fresh device or sensor name with every
//! reading would otherwise grow every per-series state (live windows, deduplication, names) without bound.
//! Readings of series already stored are always accepted. A sensor name is remembered only with the first series
//! that stores it, so rejected readings leave nothing behind; at most [`MAX_SENSORS`] sensor names are stored.
//!
//! Scope: one process. In a cluster, a name stored only at another process is not known here (the README says so).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::budget::MemoryBudget;

use hashbrown::HashMap;

use weir_operators::{DeviceId, SensorId};

use crate::reading::MAX_SENSORS;

/// The names of the device ids this process knows; cloning shares them.
#[derive(Debug, Clone)]
pub struct DeviceNames {
    known: Arc<RwLock<Known>>,
    max_series: Arc<AtomicUsize>,
    /// New series are also refused while the memory budget says so.
    budget: Arc<OnceLock<Arc<MemoryBudget>>>,
}

impl Default for DeviceNames {
    fn default() -> Self {
        DeviceNames {
            known: Arc::default(),
            max_series: Arc::new(AtomicUsize::new(usize::MAX)),
            budget: Arc::default(),
        }
    }
}

/// Both ways, so that a name seen before costs one map lookup (hashbrown's fast hasher) and no SHA-256; with each
/// device name, the sensors it has series of (sorted).
#[derive(Debug, Default)]
struct Known {
    by_name: HashMap<Arc<str>, (DeviceId, Vec<SensorId>)>,
    by_id: HashMap<DeviceId, Arc<str>>,
    sensors_by_name: HashMap<Arc<str>, SensorId>,
    sensors_by_id: HashMap<SensorId, Arc<str>>,
    series: usize,
}

/// Why a new series was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesLimit {
    /// `--max-series` series are stored.
    Count { max: usize },
    /// The memory budget is nearly used up (`--memory-limit`, bytes).
    Memory { limit: u64 },
    /// The sensor is new and [`MAX_SENSORS`] sensor names are stored.
    Sensors,
    /// The sensor's name has the id of another sensor name, stored before.
    SensorIdTaken(IdTaken),
}

impl std::fmt::Display for SeriesLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeriesLimit::Count { max } => write!(f, "{max} series (device, sensor) are stored (--max-series)"),
            SeriesLimit::Memory { limit } => write!(
                f,
                "the memory budget is nearly used up (--memory-limit {} MiB; see weir_memory_used_bytes)",
                limit >> 20
            ),
            SeriesLimit::Sensors => write!(f, "{MAX_SENSORS} distinct sensor names are stored"),
            SeriesLimit::SensorIdTaken(taken) => write!(
                f,
                "the sensor has the same 64-bit id as the sensor {:?}, which is already stored; two names never \
                 share data, so this one is refused: give the sensor another name",
                crate::decode::truncate(&taken.holder, 64)
            ),
        }
    }
}

/// Why [`DeviceNames::claim_series_of`] refused a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Its device's name has the id of another device name, stored before.
    Device(IdTaken),
    /// It would start a series that cannot be stored.
    Series(SeriesLimit),
}

/// A name whose id is another name's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTaken {
    /// The name that holds the id.
    pub holder: Box<str>,
}

impl DeviceNames {
    /// The id of `name`, remembered as its; `Err` with the other name when another holds the id.
    pub fn claim(&self, name: &str) -> Result<DeviceId, IdTaken> {
        if let Some((id, _)) = self.known.read().unwrap_or_else(|e| e.into_inner()).by_name.get(name) {
            return Ok(*id);
        }
        let id = DeviceId::of(name);
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = known.by_id.get(&id) {
            return if &**holder == name { Ok(id) } else { Err(IdTaken { holder: (**holder).into() }) };
        }
        let name: Arc<str> = name.into();
        known.by_id.insert(id, name.clone());
        known.by_name.insert(name, (id, Vec::new()));
        Ok(id)
    }

    /// [`Self::claim`] for each of `names`, in order, under one read lock (the write lock only for names not known
    /// yet): the statistics' feeder claims a WAL record's thousand device names at once, where a lock each was
    /// ~2 % of the server at 400 k readings/s.
    pub fn claim_all<S: AsRef<str>>(&self, names: &[S]) -> Vec<Result<DeviceId, IdTaken>> {
        let known_ids: Vec<Option<DeviceId>> = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            names.iter().map(|name| known.by_name.get(name.as_ref()).map(|(id, _)| *id)).collect()
        };
        names.iter().zip(known_ids).map(|(name, id)| id.map_or_else(|| self.claim(name.as_ref()), Ok)).collect()
    }

    /// [`Self::claim`] of `device` (when `new_device`: the caller has not claimed it yet) and then
    /// [`Self::claim_series`] of (`device`, `sensor`): ingest's check of each device and series new to a request.
    /// A series stored already (nearly always) costs one read lock and one lookup of each name; the two calls took
    /// two locks and three lookups (~4 % of the server at 400 k readings/s).
    pub fn claim_series_of(&self, device: &str, sensor: &str, new_device: bool) -> Result<(), Refused> {
        if self.has_series(device, sensor) {
            return Ok(());
        }
        if new_device {
            self.claim(device).map_err(Refused::Device)?;
        }
        self.claim_series(device, sensor).map_err(Refused::Series)
    }

    /// Whether the series (`device`, `sensor`) is stored (and so `device` claimed).
    fn has_series(&self, device: &str, sensor: &str) -> bool {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        matches!(
            (known.by_name.get(device), known.sensors_by_name.get(sensor)),
            (Some((_, sensors)), Some(id)) if sensors.binary_search(id).is_ok()
        )
    }

    /// Series beyond this many are refused by [`Self::claim_series`] (shared by the clones).
    pub fn set_max_series(&self, max: usize) {
        self.max_series.store(max, Ordering::Relaxed);
    }

    /// Refuses new series while `budget` is nearly used up (shared by the clones; set once).
    pub fn set_budget(&self, budget: Arc<MemoryBudget>) {
        let _ = self.budget.set(budget);
    }

    /// Records the series (`device`, `sensor`) of a reading to be stored (the device claimed before); `Err` when it
    /// is new and `--max-series` series are stored already, the memory budget refuses new series, or the sensor's
    /// name is new and cannot be stored.
    pub fn claim_series(&self, device: &str, sensor: &str) -> Result<(), SeriesLimit> {
        self.add_series(device, sensor, self.max_series.load(Ordering::Relaxed), self.budget.get())
    }

    /// Records a series read from the log or the archive: stored already, so never refused for its number. `Err`
    /// only when its sensor's id is another stored sensor's (possible only for names stored at different processes
    /// of a cluster).
    pub fn note_series(&self, device: &str, sensor: &str) -> Result<(), SeriesLimit> {
        self.add_series(device, sensor, usize::MAX, None)
    }

    fn add_series(
        &self,
        device: &str,
        sensor: &str,
        max: usize,
        budget: Option<&Arc<MemoryBudget>>,
    ) -> Result<(), SeriesLimit> {
        if self.has_series(device, sensor) {
            return Ok(());
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let Known { by_name, sensors_by_name, sensors_by_id, series, .. } = &mut *known;
        let Some((_, sensors)) = by_name.get_mut(device) else { return Ok(()) };
        let id = match sensors_by_name.get(sensor) {
            Some(id) => *id,
            None => {
                let id = SensorId::of(sensor);
                if let Some(holder) = sensors_by_id.get(&id) {
                    return Err(SeriesLimit::SensorIdTaken(IdTaken { holder: (**holder).into() }));
                }
                id
            }
        };
        let Err(place) = sensors.binary_search(&id) else { return Ok(()) };
        if *series >= max {
            return Err(SeriesLimit::Count { max });
        }
        if let Some(budget) = budget.filter(|b| !b.admits_new_series()) {
            return Err(SeriesLimit::Memory { limit: budget.limit() });
        }
        if !sensors_by_name.contains_key(sensor) {
            if sensors_by_name.len() >= MAX_SENSORS && max != usize::MAX {
                return Err(SeriesLimit::Sensors);
            }
            let name: Arc<str> = sensor.into();
            sensors_by_id.insert(id, name.clone());
            sensors_by_name.insert(name, id);
        }
        sensors.insert(place, id);
        *series += 1;
        Ok(())
    }

    /// The name of sensor `id`, if this process has stored or read a reading of it.
    pub fn sensor_name(&self, id: SensorId) -> Option<Arc<str>> {
        self.known.read().unwrap_or_else(|e| e.into_inner()).sensors_by_id.get(&id).cloned()
    }

    /// How many series are stored.
    pub fn series(&self) -> usize {
        self.known.read().unwrap_or_else(|e| e.into_inner()).series
    }

    /// How many names it knows.
    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|e| e.into_inner()).by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `holder` under `name`'s id, as a colliding name found by a birthday search would be (tests only: no
    /// such pair of names is known for SHA-256).
    #[cfg(test)]
    pub(crate) fn plant_collision(&self, name: &str, holder: &str) {
        let holder: Arc<str> = holder.into();
        let mut known = self.known.write().unwrap();
        known.by_id.insert(DeviceId::of(name), holder.clone());
        known.by_name.insert(holder, (DeviceId::of(name), Vec::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_id_and_another_name_with_the_same_id_is_refused() {
        let names = DeviceNames::default();
        let id = names.claim("truck-7").unwrap();
        assert_eq!(names.claim("truck-7"), Ok(id));
        names.plant_collision("truck-8", "planted");
        assert_eq!(names.claim("truck-8"), Err(IdTaken { holder: "planted".into() }));
        assert_eq!(names.clone().len(), 2, "clones share the names");
        assert_eq!(names.claim("planted"), Ok(DeviceId::of("truck-8")), "the holder keeps its id");
    }

    #[test]
    fn claiming_names_together_says_what_claiming_each_says() {
        let (together, one_by_one) = (DeviceNames::default(), DeviceNames::default());
        for names in [&together, &one_by_one] {
            names.claim("known").unwrap();
            names.plant_collision("truck-8", "planted");
        }
        let batch = ["known", "new", "truck-8", "new", "planted", "other"];
        let each: Vec<_> = batch.iter().map(|n| one_by_one.claim(n)).collect();
        assert_eq!(together.claim_all(&batch), each);
        assert_eq!(each[2], Err(IdTaken { holder: "planted".into() }), "a colliding name is refused among others");
        assert_eq!(together.len(), one_by_one.len(), "the new names are remembered alike");
    }

    #[test]
    fn claiming_a_device_with_its_series_says_what_claiming_each_says() {
        let (together, one_by_one) = (DeviceNames::default(), DeviceNames::default());
        for names in [&together, &one_by_one] {
            names.set_max_series(4);
            names.claim("known").unwrap();
            names.claim_series("known", "speed").unwrap();
            names.plant_collision("truck-8", "planted");
            names.known.write().unwrap().sensors_by_id.insert(SensorId::of("taken"), "speed".into());
        }
        // (device, sensor, whether the device is new to the request), in the order a request meets them.
        let readings = [
            ("known", "speed", true),
            ("known", "fuel", false),
            ("new", "speed", true),
            ("truck-8", "speed", true),
            ("new", "taken", false),
            ("planted", "fuel", true),
            ("other", "speed", true),
            ("new", "fuel", false),
            ("known", "speed", false),
        ];
        for (device, sensor, new_device) in readings {
            let each = match new_device.then(|| one_by_one.claim(device)) {
                Some(Err(taken)) => Err(Refused::Device(taken)),
                _ => one_by_one.claim_series(device, sensor).map_err(Refused::Series),
            };
            assert_eq!(together.claim_series_of(device, sensor, new_device), each, "{device} {sensor}");
        }
        assert_eq!(
            together.claim_series_of("truck-8", "speed", true),
            Err(Refused::Device(IdTaken { holder: "planted".into() }))
        );
        assert_eq!(
            together.claim_series_of("other", "fuel", true),
            Err(Refused::Series(SeriesLimit::Count { max: 4 }))
        );
        assert_eq!(together.claim_series_of("known", "fuel", false), Ok(()), "a stored series is always accepted");
        assert_eq!((together.len(), together.series()), (one_by_one.len(), one_by_one.series()));
    }

    #[test]
    fn new_series_beyond_the_limit_are_refused_and_stored_ones_never() {
        let names = DeviceNames::default();
        names.set_max_series(3);
        for device in ["a", "b"] {
            names.claim(device).unwrap();
        }
        assert_eq!(names.claim_series("a", "s0"), Ok(()));
        assert_eq!(names.claim_series("a", "s70"), Ok(()));
        assert_eq!(names.claim_series("a", "s0"), Ok(()), "the same series again");
        assert_eq!(names.claim_series("b", "s1"), Ok(()));
        assert_eq!(names.claim_series("b", "s2"), Err(SeriesLimit::Count { max: 3 }));
        assert_eq!(names.sensor_name(SensorId::of("s2")), None, "a refused series leaves no sensor name behind");
        assert_eq!(names.claim_series("a", "s70"), Ok(()), "a stored series is always accepted");
        // Read from the log or the archive: stored already, counted, never refused.
        names.note_series("b", "s2").unwrap();
        assert_eq!(names.series(), 4);
        assert_eq!(names.claim_series("b", "s2"), Ok(()));
        assert_eq!(names.sensor_name(SensorId::of("s2")).as_deref(), Some("s2"));
    }

    #[test]
    fn a_sensor_name_with_another_sensors_id_is_refused() {
        let names = DeviceNames::default();
        names.claim("d").unwrap();
        names.claim_series("d", "speed").unwrap();
        names.known.write().unwrap().sensors_by_id.insert(SensorId::of("planted"), "speed".into());
        assert_eq!(
            names.claim_series("d", "planted"),
            Err(SeriesLimit::SensorIdTaken(IdTaken { holder: "speed".into() }))
        );
        assert!(names.claim_series("d", "planted").unwrap_err().to_string().contains("give the sensor another name"));
    }
}
