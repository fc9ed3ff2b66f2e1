//! Which name owns which device id, so that no two names ever share state.
//!
//! Inside the dataflow a device is its [`DeviceId`], a 64-bit hash of its name. A cryptographic hash makes aiming a
//! name at another device's id infeasible, but two names that share an id can still be found by a birthday search
//! (about 2^32 hashes). [`DeviceNames`] remembers the name of every id this process has stored or read from its log
//! and archive; ingest refuses a new name whose id another name holds, so the two can never merge.
//!
//! Scope: one process. In a cluster, a name stored only at another process is not known here (the README says so).

use std::sync::{Arc, RwLock};

use hashbrown::HashMap;

use weir_operators::DeviceId;

/// The names of the device ids this process knows; cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct DeviceNames {
    known: Arc<RwLock<Known>>,
}

/// Both ways, so that a name seen before costs one map lookup (hashbrown's fast hasher) and no SHA-256.
#[derive(Debug, Default)]
struct Known {
    by_name: HashMap<Arc<str>, DeviceId>,
    by_id: HashMap<DeviceId, Arc<str>>,
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
        if let Some(id) = self.known.read().unwrap_or_else(|e| e.into_inner()).by_name.get(name) {
            return Ok(*id);
        }
        let id = DeviceId::of(name);
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = known.by_id.get(&id) {
            return if &**holder == name { Ok(id) } else { Err(IdTaken { holder: (**holder).into() }) };
        }
        let name: Arc<str> = name.into();
        known.by_id.insert(id, name.clone());
        known.by_name.insert(name, id);
        Ok(id)
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
        known.by_name.insert(holder, DeviceId::of(name));
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
}
