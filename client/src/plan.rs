//! The planner: what to do about each path, decided purely from three views (what the scan saw
//! here, what was last synced, what the server holds that is newer), touching neither disk nor
//! network, so that a model test can call it as often as it likes.
//!
//! The rules, per path:
//! - Unknown is not absent. A path in a subtree the scan could not read is left alone: nothing is
//!   deleted for it, and a server change under it waits (as a problem, retried).
//! - Ignored is not deleted. A synced path that `.lbsyncignore` now excludes stops syncing: its
//!   record is forgotten and it stays as it is, here and everywhere else; server changes to it
//!   are not applied here.
//! - Changed here means the fingerprint moved *and* (for files) the content, mode or mtime did:
//!   a file whose fingerprint changed but whose bytes, mode and mtime are as synced (a new inode
//!   or ctime only) is only refreshed.
//! - Only-local changes are uploaded, only-remote ones applied; both: equal contents are adopted,
//!   a modification beats a deletion on either side, and otherwise both are kept (conflicted
//!   copy). A local file the state does not know, at a path the server deleted, is checked
//!   against the path's history before it is sent: an old version is not brought back.
//! - A server that forgot (its store was replaced or restored from a backup) is never believed
//!   over this folder: an older version it holds is not applied, nothing is deleted for it, and
//!   every local path is offered to it again. A version newer than what was synced here (someone
//!   edited since) meets the local one as a conflict.
//! - A server that forgot old deletions (its tombstone expiry passed this folder's cursor: a
//!   re-scan, see `State::rescan`) is believed for every path it lists, but a synced path it no
//!   longer lists is not taken as deleted: it is offered to it again (or, deleted here too,
//!   dropped). No deletion is made because a server forgot; unknown is not deleted.
//! - Our own commit whose answer was lost (in doubt) is recognised as ours.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lbsync_proto::{Entry, EntryKind, SyncPath};

use crate::local::{LocalTree, unchanged};
use crate::state::{Kind, Synced};

/// What to do about one path.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send the local version on top of server version `base`.
    Upload {
        /// The version it edits (0: a new path).
        base: u64,
    },
    /// Commit a tombstone on top of `base`: a person deleted the path here.
    DeleteThere {
        /// The version deleted.
        base: u64,
        /// What it was.
        kind: EntryKind,
    },
    /// Write the server's version here.
    Apply(Entry),
    /// Delete the local path: a person deleted it elsewhere after the version here was written.
    DeleteHere(Entry),
    /// Take the server's entry as synced; the local side already matches it.
    Adopt(Entry),
    /// Both sides changed: equal contents are adopted, else both are kept.
    BothChanged(Entry),
    /// A local file the state does not know, where the server has a tombstone: buried if it is
    /// an old version of the path, uploaded otherwise.
    Returning(Entry),
    /// The fingerprint moved but the content did not: record the new fingerprint.
    Refresh,
    /// The path is ignored now: stop syncing it, touching nothing.
    Forget,
    /// Deleted here, and a server that forgot does not have it either: nothing is left to do
    /// but drop its record.
    Drop,
    /// A server change that cannot be applied now (it is under an unknown subtree).
    Defer {
        /// The change.
        entry: Entry,
        /// Why it waits.
        reason: String,
    },
}

impl Action {
    /// Where the action deletes, if it does, and whether what it deletes is a directory.
    fn deletes(&self) -> Option<(Side, bool)> {
        match self {
            Action::DeleteThere { kind, .. } => Some((Side::There, *kind == EntryKind::Dir)),
            Action::DeleteHere(e) => Some((Side::Here, e.kind == EntryKind::Dir)),
            _ => None,
        }
    }
}

/// Where a deletion would happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// On the server (and so on every other device).
    There,
    /// In this folder.
    Here,
}

/// A file whose fingerprint moved (or was taken too close to its last change to be trusted),
/// hashed before planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashed {
    /// Same bytes and mode as synced.
    Same,
    /// Same bytes, another mode or modification time (`touch`, `chmod`, a release unpacked
    /// over the same files): a metadata change, sent as a metadata-only commit.
    Metadata,
    /// Other bytes (or unreadable: then it is treated as changed, which is safe).
    Changed,
}

/// Everything the planner looks at.
pub struct View<'a> {
    /// The scan.
    pub local: &'a LocalTree,
    /// What was last synced, by path.
    pub synced: &'a BTreeMap<String, Synced>,
    /// Paths whose last commit got no answer.
    pub in_doubt: &'a BTreeSet<String>,
    /// The server forgot what was synced (see `State::forgotten`).
    pub forgotten: bool,
    /// The server may have forgotten deletions this folder never saw, and `remote` is its whole
    /// current listing (see `State::rescan`): a synced path it does not list is offered again.
    pub rescan: bool,
    /// Files hashed because their fingerprint moved or was racy.
    pub hashed: &'a HashMap<SyncPath, Hashed>,
    /// The state is new (see `State::seeding`).
    pub seeding: bool,
    /// The folder is end-to-end encrypted: each entry's version is sealed with it, so the
    /// version number decides what is older, never the server's unauthenticated commit times.
    pub sealed_versions: bool,
}

/// Whether a path is excluded by ignore rules (`is_dir` for the rule syntax).
pub type Ignored<'a> = &'a dyn Fn(&SyncPath, bool) -> bool;

/// The plan for every path that needs something done.
pub fn plan(
    view: &View<'_>,
    mut remote: HashMap<SyncPath, Entry>,
    ignored: Ignored<'_>,
) -> BTreeMap<SyncPath, Action> {
    let mut paths: BTreeSet<SyncPath> = view.local.files.keys().cloned().collect();
    paths.extend(
        view.synced
            .keys()
            .filter_map(|p| SyncPath::new(p.clone()).ok()),
    );
    paths.extend(remote.keys().cloned());
    let mut out = BTreeMap::new();
    for path in paths {
        let synced = view.synced.get(path.as_str());
        let listed = remote.contains_key(&path);
        // What the server holds as synced is no change, except to a server that forgot: there
        // it is what the server has now, which decides what is offered again.
        let there = remote.remove(&path).filter(|r| {
            view.forgotten || synced.is_none_or(|s| s.version != r.version || !holds(r, s))
        });
        if let Some(action) = plan_path(view, &path, synced, (there, listed), ignored) {
            out.insert(path, action);
        }
    }
    out
}

fn plan_path(
    view: &View<'_>,
    path: &SyncPath,
    synced: Option<&Synced>,
    (there, listed): (Option<Entry>, bool),
    ignored: Ignored<'_>,
) -> Option<Action> {
    let here = view.local.files.get(path);
    if let Some(reason) = view.local.unknown_reason(path) {
        return there.map(|entry| Action::Defer {
            entry,
            reason: format!("cannot read it here ({reason})"),
        });
    }
    // The scan leaves ignored paths out: absent here is not deleted if it is ignored.
    // What the server sends is judged by its own kind: a file where an ignored directory (`d/`)
    // was is not ignored.
    if here.is_none() && (synced.is_some() || there.is_some()) {
        let is_dir = match &there {
            Some(r) => r.kind == EntryKind::Dir,
            None => synced.is_some_and(|s| s.local.kind == Kind::Dir),
        };
        if ignored(path, is_dir) {
            return synced.map(|_| Action::Forget);
        }
    }
    let hashed = view.hashed.get(path).copied();
    let changed_here = match (here, synced) {
        (None, None) => false,
        (Some(l), Some(s)) => match hashed {
            Some(Hashed::Same) => false,
            Some(Hashed::Metadata) => there.is_none(),
            Some(Hashed::Changed) => true,
            None => !unchanged(l, &s.local),
        },
        _ => true,
    };
    let refresh = || (hashed == Some(Hashed::Same)).then_some(Action::Refresh);
    let base = synced.map_or(0, |s| s.version);

    // Our own commit whose answer never came: the server holds what we sent.
    if let Some(r) = there
        .as_ref()
        .filter(|_| view.in_doubt.contains(path.as_str()))
    {
        return Some(match (here, r.deleted) {
            (None, true) => Action::Adopt(r.clone()),
            (None, false) => Action::DeleteThere {
                base: r.version,
                kind: r.kind,
            },
            (Some(_), _) => Action::Upload { base: r.version },
        });
    }

    // A server that forgot, or a version older than the one synced here.
    if let Some(s) = synced {
        // An older version, or the same version number with other content: a store restored
        // from a backup that numbered someone else's commit as this one.
        let regressed = there
            .as_ref()
            .is_some_and(|r| r.version < s.version || (r.version == s.version && !holds(r, s)));
        // A re-scan: a synced path the whole listing lacks may be a deletion the server forgot,
        // or never heard of; either way the copy here is offered again, never deleted.
        let unlisted = view.rescan && !listed;
        if view.forgotten || regressed || unlisted {
            return Some(forgetful_server(
                here,
                s,
                there,
                changed_here,
                view.sealed_versions,
            ));
        }
    }

    Some(match (changed_here, there) {
        (false, None) => return refresh(),
        (true, None) => match here {
            Some(_) => Action::Upload { base },
            None => Action::DeleteThere {
                base,
                kind: synced.map_or(EntryKind::File, |s| entry_kind(s.local.kind)),
            },
        },
        (false, Some(r)) if r.deleted => match here {
            Some(_) => Action::DeleteHere(r),
            None => Action::Adopt(r),
        },
        (false, Some(r)) => Action::Apply(r),
        (true, Some(r)) => match (here, r.deleted) {
            (None, true) => Action::Adopt(r),
            // A modification beats a deletion, on either side.
            (None, false) => Action::Apply(r),
            (Some(_), true) if synced.is_none() && view.seeding => Action::Returning(r),
            (Some(_), true) => Action::Upload { base: r.version },
            // Only the mode changed there (same bytes as synced): the edit here goes on top.
            (Some(_), false) if metadata_only(&r, synced) => Action::Upload { base: r.version },
            (Some(_), false) => Action::BothChanged(r),
        },
    })
}

/// Whether the server's entry `r` holds what was synced as `s` (kind, and a file's manifest or a
/// link's target; modes and times aside).
pub(crate) fn holds(r: &Entry, s: &Synced) -> bool {
    !r.deleted
        && entry_kind(s.local.kind) == r.kind
        && (r.kind != EntryKind::File || r.manifest.map(|m| m.to_string()) == s.manifest)
        && (r.kind != EntryKind::Symlink || r.symlink_target == s.local.target)
}

/// Whether the server's entry `r` differs from what was synced only in its metadata.
fn metadata_only(r: &Entry, synced: Option<&Synced>) -> bool {
    synced.is_some_and(|s| {
        r.kind == EntryKind::File
            && s.local.kind == Kind::File
            && r.manifest
                .is_some_and(|m| s.manifest.as_deref() == Some(m.to_string().as_str()))
    })
}

/// The plan for a synced path when the server forgot (or holds an older version than `s`):
/// nothing it holds that is not newer than `s` is applied, nothing is deleted for it, and the
/// local version is offered to it again.
fn forgetful_server(
    here: Option<&crate::state::Fingerprint>,
    s: &Synced,
    there: Option<Entry>,
    changed_here: bool,
    sealed_versions: bool,
) -> Action {
    let Some(r) = there else {
        return match here {
            Some(_) => Action::Upload { base: 0 },
            // Deleted here since it was synced, and the server does not have it: done.
            None => Action::Drop,
        };
    };
    // Same bytes; a mode it never got (a chmod it forgot) is sent again too.
    let mode_differs = here.is_some_and(|l| {
        let theirs = if r.mode == 0 { 0o644 } else { r.mode & 0o777 };
        l.kind == Kind::File && l.mode & 0o777 != theirs
    });
    if holds(&r, s) {
        return match here {
            // Deleted here, and the server has again what was deleted: the deletion goes on.
            None => Action::DeleteThere {
                base: r.version,
                kind: r.kind,
            },
            Some(_) if changed_here || mode_differs => Action::Upload { base: r.version },
            Some(_) => Action::Adopt(r),
        };
    }
    // Without the server's times, the same number with other content could be either: both
    // are kept.
    let newer = if sealed_versions && r.version != s.version {
        // The number is sealed with the entry and a hostile server can replay an old entry
        // with any commit time: an older number is older, whatever the times say.
        r.version > s.version
    } else if r.committed_ns > 0 && s.committed_ns > 0 {
        r.committed_ns > s.committed_ns
    } else {
        r.version >= s.version
    };
    match (here, newer) {
        // What the server holds is older than what was synced here: ours goes on top.
        (Some(_), false) => Action::Upload { base: r.version },
        (None, false) if r.deleted => Action::Adopt(r),
        (None, false) => Action::DeleteThere {
            base: r.version,
            kind: r.kind,
        },
        // Someone changed it since the server forgot: the version here may exist nowhere
        // else, so a deletion there does not remove it, and an edit meets it as a conflict.
        (Some(_), true) if r.deleted => Action::Upload { base: r.version },
        (Some(_), true) => Action::BothChanged(r),
        (None, true) if r.deleted => Action::Adopt(r),
        (None, true) => Action::Apply(r),
    }
}

/// When deletions are too many to be what a person meant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteGuard {
    /// More deletions than this in one sync are held back.
    pub max_files: u64,
    /// More than this fraction of the folder's files deleted in one sync is held back...
    pub max_fraction: f64,
    /// ...once that is at least this many files.
    pub min_files: u64,
}

impl Default for DeleteGuard {
    fn default() -> Self {
        Self {
            max_files: 1000,
            max_fraction: 0.5,
            min_files: 10,
        }
    }
}

/// Deletions the guard held back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// Deletions made here that would have gone to the server.
    pub there: u64,
}

impl DeleteGuard {
    /// Takes out of `plan` the deletions made here when they are too many, and says how many.
    /// `files` is how many files and links the folder had when last synced.
    pub fn hold(&self, plan: &mut BTreeMap<SyncPath, Action>, files: u64) -> Held {
        // Directories do not count (their files do), but are held with them.
        let count = |plan: &BTreeMap<SyncPath, Action>, side| {
            plan.values()
                .filter(|a| a.deletes() == Some((side, false)))
                .count() as u64
        };
        let too_many = |n: u64| {
            n > self.max_files
                || (n >= self.min_files && n as f64 > self.max_fraction * files as f64)
        };
        // Deletions made here are held; those from the server were let through (or made
        // without a guard) where they were made, and holding them on every device too would ask
        // every person to confirm one person's decision.
        let mut held = Held::default();
        let n = count(plan, Side::There);
        if too_many(n) {
            held.there = n;
            plan.retain(|_, a| a.deletes().is_none_or(|(s, _)| s != Side::There));
        }
        held
    }
}

/// The entry kind of a local kind.
pub fn entry_kind(k: Kind) -> EntryKind {
    match k {
        Kind::File => EntryKind::File,
        Kind::Dir => EntryKind::Dir,
        Kind::Symlink => EntryKind::Symlink,
    }
}

#[cfg(test)]
mod tests;
