//! The per-path records in memory, with the paths changed since the last save: a save writes
//! those rows and no others.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use super::Synced;

/// Per path, what was last synced. Reads go through `Deref` to the map; every change goes
/// through a method here, which notes the path for the next save.
#[derive(Clone, Debug, Default)]
pub struct Files {
    map: BTreeMap<String, Synced>,
    dirty: BTreeSet<String>,
}

impl Files {
    /// Records loaded from the database (nothing to write back).
    pub(crate) fn loaded(map: BTreeMap<String, Synced>) -> Self {
        Self {
            map,
            dirty: BTreeSet::new(),
        }
    }

    /// Notes every record as to be written (a migrated state).
    pub(crate) fn mark_all_changed(&mut self) {
        self.dirty = self.map.keys().cloned().collect();
    }

    /// Sets the record of `path`.
    pub fn insert(&mut self, path: String, synced: Synced) -> Option<Synced> {
        self.dirty.insert(path.clone());
        self.map.insert(path, synced)
    }

    /// Forgets the record of `path`.
    pub fn remove(&mut self, path: &str) -> Option<Synced> {
        let old = self.map.remove(path);
        if old.is_some() {
            self.dirty.insert(path.to_owned());
        }
        old
    }

    /// The record of `path`, to change in place.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Synced> {
        let synced = self.map.get_mut(path)?;
        if !self.dirty.contains(path) {
            self.dirty.insert(path.to_owned());
        }
        Some(synced)
    }

    /// The changed paths with their records now (`None`: removed), for a save.
    pub(crate) fn changes(&self) -> Vec<(&str, Option<&Synced>)> {
        self.dirty
            .iter()
            .map(|p| (p.as_str(), self.map.get(p)))
            .collect()
    }

    /// After a save: nothing is left to write.
    pub(crate) fn saved(&mut self) {
        self.dirty.clear();
    }
}

impl Deref for Files {
    type Target = BTreeMap<String, Synced>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<'a> IntoIterator for &'a Files {
    type Item = (&'a String, &'a Synced);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Synced>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}
