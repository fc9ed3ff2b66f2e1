//! A batch's names in one buffer.
//!
//! Why not `Vec<Box<str>>`: ingest builds a batch per request, and a batch of a thousand devices made a thousand
//! allocations and freed them with the batch (the archiver again, reading the record back): ~5 % of the server's CPU
//! at 400 k readings/s (`benches/RESULTS.md`). Here a table is two growing buffers, whatever its names.

use std::ops::Index;

/// Names, each at an index: name `i` is `text[ends[i - 1]..ends[i]]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    text: String,
    ends: Vec<u32>,
}

impl NameTable {
    /// An empty table.
    pub fn new() -> Self {
        NameTable::default()
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no name.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Name `i`, if there is one.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.text[start..end])
    }

    /// Adds `name` at index [`Self::len`] (before the call).
    ///
    /// # Panics
    /// When the table's names would exceed 4 GiB together (a batch is bounded by the request's size far below).
    #[inline]
    pub fn push(&mut self, name: &str) {
        self.text.push_str(name);
        let end = u32::try_from(self.text.len()).expect("a batch's names stay below 4 GiB");
        self.ends.push(end);
    }

    /// The names in index order.
    pub fn iter(&self) -> Names<'_> {
        Names { text: &self.text, ends: self.ends.iter(), start: 0 }
    }

    /// Removes every name, keeping the buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// Bytes of all names together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
}

impl Index<usize> for NameTable {
    type Output = str;

    /// Name `i`.
    ///
    /// # Panics
    /// When there is no name `i`, like a slice.
    #[inline]
    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(name) => name,
            None => panic!("name index {i} out of range for a table of {} names", self.len()),
        }
    }
}

impl<'a> FromIterator<&'a str> for NameTable {
    fn from_iter<I: IntoIterator<Item = &'a str>>(names: I) -> Self {
        let mut table = NameTable::new();
        for name in names {
            table.push(name);
        }
        table
    }
}

/// The names of a [`NameTable`] in index order.
#[derive(Clone, Debug)]
pub struct Names<'a> {
    text: &'a str,
    ends: std::slice::Iter<'a, u32>,
    start: usize,
}

impl<'a> Iterator for Names<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let end = *self.ends.next()? as usize;
        let name = &self.text[self.start..end];
        self.start = end;
        Some(name)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

impl ExactSizeIterator for Names<'_> {}

impl<'a> IntoIterator for &'a NameTable {
    type Item = &'a str;
    type IntoIter = Names<'a>;

    fn into_iter(self) -> Names<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for NameTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any names (empty ones and repeats included) read back as pushed, by index and in order.
        #[test]
        fn names_read_back_as_pushed(names in proptest::collection::vec("[a-zé.-]{0,12}", 0..40)) {
            let table: NameTable = names.iter().map(String::as_str).collect();
            proptest::prop_assert_eq!(table.len(), names.len());
            for (i, name) in names.iter().enumerate() {
                proptest::prop_assert_eq!(&table[i], name.as_str());
                proptest::prop_assert_eq!(table.get(i), Some(name.as_str()));
            }
            proptest::prop_assert_eq!(table.get(names.len()), None);
            proptest::prop_assert_eq!(table.iter().collect::<Vec<_>>(), names.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_cleared_table_is_empty_and_takes_new_names() {
        let mut table: NameTable = ["truck-7", "", "truck-8"].into_iter().collect();
        assert_eq!(format!("{table:?}"), r#"["truck-7", "", "truck-8"]"#);
        table.clear();
        assert!(table.is_empty());
        table.push("x");
        assert_eq!((&table[0], table.len()), ("x", 1));
    }
}
