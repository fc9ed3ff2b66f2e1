//! Which name owns which device id, so that no two names ever share state.
//!
//! Inside the dataflow a device is its [`DeviceId`], a 64-bit hash of its name. A cryptographic hash makes aiming a
//! name at another device's id infeasible, but two names that share an id can still be found by a birthday search
//! (about 2^32 hashes). [`DeviceNames`] remembers the name of every id this process has stored or read from its log
//! and archive; ingest refuses a new name whose id another name holds, so the two can never merge.
//!
//! It also counts the **series** (device, sensor) stored, and refuses a reading that would start a new one beyond
//! `--max-series` ([`DeviceNames::claim_series`]): a client that sends a fresh device name with every reading
//! would otherwise grow every per-series state (live windows, deduplication, names) without bound. Readings of
//! series already stored are always accepted.
//!
//! Scope: one process. In a cluster, a name stored only at another process is not known here (the README says so).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::budget::MemoryBudget;

use hashbrown::HashMap;

use weir_operators::DeviceId;

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
/// name, the sensors it has series of (a bit per sensor index).
#[derive(Debug, Default)]
struct Known {
    by_name: HashMap<Arc<str>, (DeviceId, Vec<u64>)>,
    by_id: HashMap<DeviceId, Arc<str>>,
    series: usize,
}

/// Why a new series was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesLimit {
    /// `--max-series` series are stored.
    Count { max: usize },
    /// The memory budget is nearly used up (`--memory-limit`, bytes).
    Memory { limit: u64 },
}

fn has_bit(mask: &[u64], sensor: u16) -> bool {
    mask.get(usize::from(sensor) / 64).is_some_and(|w| w & (1 << (sensor % 64)) != 0)
}

/// Sets the bit; whether it was new.
fn set_bit(mask: &mut Vec<u64>, sensor: u16) -> bool {
    let word = usize::from(sensor) / 64;
    if mask.len() <= word {
        mask.resize(word + 1, 0);
    }
    let new = mask[word] & (1 << (sensor % 64)) == 0;
    mask[word] |= 1 << (sensor % 64);
    new
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

    /// Series beyond this many are refused by [`Self::claim_series`] (shared by the clones).
    pub fn set_max_series(&self, max: usize) {
        self.max_series.store(max, Ordering::Relaxed);
    }

    /// Refuses new series while `budget` is nearly used up (shared by the clones; set once).
    pub fn set_budget(&self, budget: Arc<MemoryBudget>) {
        let _ = self.budget.set(budget);
    }

    /// Records the series (`name`, `sensor`) of a reading to be stored (the name claimed before); `Err` when it is
    /// new and `--max-series` series are stored already, or the memory budget refuses new series.
    pub fn claim_series(&self, name: &str, sensor: u16) -> Result<(), SeriesLimit> {
        self.add_series(name, sensor, self.max_series.load(Ordering::Relaxed), self.budget.get())
    }

    /// Records a series read from the log or the archive: stored already, so never refused.
    pub fn note_series(&self, name: &str, sensor: u16) {
        let _ = self.add_series(name, sensor, usize::MAX, None);
    }

    fn add_series(
        &self,
        name: &str,
        sensor: u16,
        max: usize,
        budget: Option<&Arc<MemoryBudget>>,
    ) -> Result<(), SeriesLimit> {
        if let Some((_, mask)) = self.known.read().unwrap_or_else(|e| e.into_inner()).by_name.get(name)
            && has_bit(mask, sensor)
        {
            return Ok(());
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let Known { by_name, series, .. } = &mut *known;
        let Some((_, mask)) = by_name.get_mut(name) else { return Ok(()) };
        if has_bit(mask, sensor) {
            return Ok(());
        }
        if *series >= max {
            return Err(SeriesLimit::Count { max });
        }
        if let Some(budget) = budget.filter(|b| !b.admits_new_series()) {
            return Err(SeriesLimit::Memory { limit: budget.limit() });
        }
        set_bit(mask, sensor);
        *series += 1;
        Ok(())
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
    fn new_series_beyond_the_limit_are_refused_and_stored_ones_never() {
        let names = DeviceNames::default();
        names.set_max_series(3);
        for device in ["a", "b"] {
            names.claim(device).unwrap();
        }
        assert_eq!(names.claim_series("a", 0), Ok(()));
        assert_eq!(names.claim_series("a", 70), Ok(()));
        assert_eq!(names.claim_series("a", 0), Ok(()), "the same series again");
        assert_eq!(names.claim_series("b", 1), Ok(()));
        assert_eq!(names.claim_series("b", 2), Err(SeriesLimit::Count { max: 3 }));
        assert_eq!(names.claim_series("a", 70), Ok(()), "a stored series is always accepted");
        // Read from the log or the archive: stored already, counted, never refused.
        names.note_series("b", 2);
        assert_eq!(names.series(), 4);
        assert_eq!(names.claim_series("b", 2), Ok(()));
    }
}
