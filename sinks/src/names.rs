//! Device and sensor names numbered once each, so that rows carry small integers instead of strings: the seal's
//! merge and the archiver's flush compare and sort numbers, and look a name up only to write it.

use std::cmp::Ordering;
use std::collections::HashMap;

/// The names met so far, each numbered once (so equal numbers are equal names).
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// Looked up for every name of every WAL record the archiver reads: with foldhash, not std's SipHash.
    ids: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    names: Vec<Box<str>>,
}

impl Names {
    /// The number of `name`, given when it is first met.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(Box::from(name), id);
        self.names.push(Box::from(name));
        id
    }

    /// How many names are numbered.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The name numbered `id`.
    pub fn get(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// The order of the names numbered `a` and `b`.
    pub fn cmp(&self, a: u32, b: u32) -> Ordering {
        if a == b { Ordering::Equal } else { self.names[a as usize].cmp(&self.names[b as usize]) }
    }

    /// Each number's rank among the names in their order (`ranks[id]`), and the names by rank: comparing ranks is
    /// comparing the names.
    pub fn ranked(&self) -> (Vec<u32>, Vec<&str>) {
        let mut by_rank: Vec<u32> = (0..self.names.len() as u32).collect();
        by_rank.sort_unstable_by(|&a, &b| self.names[a as usize].cmp(&self.names[b as usize]));
        let mut ranks = vec![0; self.names.len()];
        for (rank, &id) in by_rank.iter().enumerate() {
            ranks[id as usize] = rank as u32;
        }
        (ranks, by_rank.iter().map(|&id| self.get(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_order_as_the_names_do() {
        let mut names = Names::default();
        let words = ["speed", "Speed", "fuel", "speed", "a.b", "é"];
        let ids: Vec<u32> = words.iter().map(|w| names.intern(w)).collect();
        assert_eq!(ids, [0, 1, 2, 0, 3, 4]);
        let (ranks, by_rank) = names.ranked();
        assert_eq!(by_rank, ["Speed", "a.b", "fuel", "speed", "é"]);
        for (i, a) in words.iter().enumerate() {
            for (j, b) in words.iter().enumerate() {
                assert_eq!(ranks[ids[i] as usize].cmp(&ranks[ids[j] as usize]), a.cmp(b), "{a} {b}");
                assert_eq!(names.cmp(ids[i], ids[j]), a.cmp(b));
            }
        }
    }
}
