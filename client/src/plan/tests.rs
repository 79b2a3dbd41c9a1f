//! The planner's rules, each as the smallest case that shows it, and a property: whatever the
//! three views, nothing is deleted under an unknown subtree or for an ignored path.

use super::*;
use crate::state::Fingerprint;
use lbsync_chunkstore::Manifest;
use proptest::prelude::*;

fn p(s: &str) -> SyncPath {
    SyncPath::new(s).unwrap()
}

fn fp(kind: Kind, mtime_ns: i64) -> Fingerprint {
    Fingerprint {
        kind,
        size: 1,
        mtime_ns,
        inode: 1,
        mode: 0o644,
        target: None,
        ctime_ns: mtime_ns,
        dev: 1,
    }
}

fn synced(version: u64, committed_ns: i64) -> Synced {
    Synced {
        committed_ns,
        ..Synced::new(version, Some(Manifest::empty().id()), fp(Kind::File, 1))
    }
}

fn entry(path: &str, version: u64, deleted: bool, committed_ns: i64) -> Entry {
    let mut e = if deleted {
        Entry::tombstone(p(path), EntryKind::File, "other#1")
    } else {
        Entry::file(p(path), &Manifest::new(vec![]), "other#1")
    };
    e.version = version;
    e.committed_ns = committed_ns;
    if !deleted {
        // Other content than the synced (empty) manifest.
        e.manifest = Some(lbsync_chunkstore::ManifestId::of(b"other"));
    }
    e
}

struct Case {
    local: LocalTree,
    synced: BTreeMap<String, Synced>,
    in_doubt: BTreeSet<String>,
    forgotten: bool,
    rescan: bool,
    hashed: HashMap<SyncPath, Hashed>,
    sealed_versions: bool,
}

impl Case {
    fn new() -> Self {
        Self {
            local: LocalTree::default(),
            synced: BTreeMap::new(),
            in_doubt: BTreeSet::new(),
            forgotten: false,
            rescan: false,
            hashed: HashMap::new(),
            sealed_versions: false,
        }
    }

    fn here(mut self, path: &str, f: Fingerprint) -> Self {
        self.local.files.insert(p(path), f);
        self
    }

    fn synced(mut self, path: &str, s: Synced) -> Self {
        self.synced.insert(path.into(), s);
        self
    }

    fn plan_with(&self, remote: Vec<Entry>, ignored: Ignored<'_>) -> BTreeMap<SyncPath, Action> {
        let view = View {
            local: &self.local,
            synced: &self.synced,
            in_doubt: &self.in_doubt,
            forgotten: self.forgotten,
            rescan: self.rescan,
            hashed: &self.hashed,
            seeding: true,
            sealed_versions: self.sealed_versions,
        };
        plan(
            &view,
            remote.into_iter().map(|e| (e.path.clone(), e)).collect(),
            ignored,
        )
    }

    fn plan(&self, remote: Vec<Entry>) -> BTreeMap<SyncPath, Action> {
        self.plan_with(remote, &|_, _| false)
    }
}

#[test]
fn a_path_missing_here_is_deleted_there_only_when_known_to_be_gone() {
    let c = Case::new().synced("a.txt", synced(1, 0));
    assert!(matches!(
        c.plan(vec![]).get(&p("a.txt")),
        Some(Action::DeleteThere { base: 1, .. })
    ));

    let mut c = Case::new()
        .synced("proj/a.txt", synced(1, 0))
        .here("proj", fp(Kind::Dir, 1));
    c.local
        .unknown
        .push((p("proj"), "permission denied".into()));
    assert!(c.plan(vec![]).is_empty(), "unknown is not deleted");
    let plan = c.plan(vec![entry("proj/b.txt", 2, false, 0)]);
    assert!(
        matches!(plan.get(&p("proj/b.txt")), Some(Action::Defer { .. })),
        "a server change under it waits: {plan:?}"
    );
}

#[test]
fn an_ignored_path_is_forgotten_not_deleted_and_its_changes_not_applied() {
    let c = Case::new().synced("a.log", synced(1, 0));
    let ignored = |path: &SyncPath, _: bool| path.as_str().ends_with(".log");
    let plan = c.plan_with(vec![], &ignored);
    assert_eq!(plan.get(&p("a.log")), Some(&Action::Forget));
    let plan = Case::new().plan_with(vec![entry("b.log", 3, false, 0)], &ignored);
    assert!(plan.is_empty(), "{plan:?}");

    // A directory-only rule (`d/`): the file that took an ignored directory's name elsewhere
    // is not ignored, and arrives.
    let dir_only = |path: &SyncPath, is_dir: bool| is_dir && path.as_str() == "d";
    let mut dir = synced(1, 0);
    dir.local = fp(Kind::Dir, 1);
    let c = Case::new().synced("d", dir);
    assert_eq!(
        c.plan_with(vec![], &dir_only).get(&p("d")),
        Some(&Action::Forget)
    );
    let plan = c.plan_with(vec![entry("d", 2, false, 0)], &dir_only);
    assert!(
        matches!(plan.get(&p("d")), Some(Action::Apply(_))),
        "{plan:?}"
    );
}

#[test]
fn a_file_whose_bytes_hash_as_synced_is_only_refreshed() {
    let mut c = Case::new()
        .synced("a.txt", synced(1, 0))
        .here("a.txt", fp(Kind::File, 99));
    c.hashed.insert(p("a.txt"), Hashed::Same);
    assert_eq!(c.plan(vec![]).get(&p("a.txt")), Some(&Action::Refresh));
    // A chmod alone meets a remote edit: the edit is applied, no conflict.
    c.hashed.insert(p("a.txt"), Hashed::Metadata);
    assert!(matches!(
        c.plan(vec![entry("a.txt", 2, false, 0)]).get(&p("a.txt")),
        Some(Action::Apply(_))
    ));
    assert!(matches!(
        c.plan(vec![]).get(&p("a.txt")),
        Some(Action::Upload { base: 1 })
    ));
}

#[test]
fn a_forgetful_server_is_never_believed_over_this_folder() {
    // Restored from a backup: the server holds v2 of what was synced here at v5.
    let c = Case::new()
        .synced("a.txt", synced(5, 500))
        .here("a.txt", fp(Kind::File, 1));
    let plan = c.plan(vec![entry("a.txt", 2, false, 200)]);
    assert_eq!(plan.get(&p("a.txt")), Some(&Action::Upload { base: 2 }));
    let plan = c.plan(vec![entry("a.txt", 2, true, 200)]);
    assert_eq!(plan.get(&p("a.txt")), Some(&Action::Upload { base: 2 }));

    // Wiped: the server holds nothing; everything here is offered again, nothing deleted.
    let mut c = Case::new()
        .synced("a.txt", synced(5, 500))
        .here("a.txt", fp(Kind::File, 1))
        .synced("gone.txt", synced(3, 300));
    c.forgotten = true;
    let plan = c.plan(vec![]);
    assert_eq!(plan.get(&p("a.txt")), Some(&Action::Upload { base: 0 }));
    assert_eq!(plan.get(&p("gone.txt")), Some(&Action::Drop));
    // Another device offered it again as it was synced: the deletion made here goes on, and
    // what is unchanged here is adopted.
    let c = c
        .here("same.txt", fp(Kind::File, 1))
        .synced("same.txt", synced(4, 400));
    let as_synced = |path: &str| {
        let mut e = entry(path, 1, false, 900);
        e.manifest = Some(Manifest::empty().id());
        e
    };
    let plan = c.plan(vec![as_synced("gone.txt"), as_synced("same.txt")]);
    assert!(matches!(plan.get(&p("same.txt")), Some(Action::Adopt(_))));
    assert_eq!(
        plan.get(&p("gone.txt")),
        Some(&Action::DeleteThere {
            base: 1,
            kind: EntryKind::File
        })
    );

    // Someone edited it on the server after it forgot: both are kept.
    let plan = c.plan(vec![entry("a.txt", 1, false, 900)]);
    assert!(matches!(
        plan.get(&p("a.txt")),
        Some(Action::BothChanged(_))
    ));
}

#[test]
fn in_an_encrypted_folder_an_older_version_is_older_whatever_its_commit_time() {
    // A hostile server replays v1, honestly sealed, with a commit time after the v5 synced here.
    // In a plain folder that is taken as an edit made after the server forgot (both kept); in an
    // encrypted one the sealed number says it is old: nothing of it is written here.
    let mut c = Case::new()
        .synced("a.txt", synced(5, 500))
        .here("a.txt", fp(Kind::File, 1))
        .synced("gone.txt", synced(5, 500));
    let replayed = |path: &str| entry(path, 1, false, 900);
    let plan = c.plan(vec![replayed("a.txt"), replayed("gone.txt")]);
    assert!(matches!(
        plan.get(&p("a.txt")),
        Some(Action::BothChanged(_))
    ));
    assert!(matches!(plan.get(&p("gone.txt")), Some(Action::Apply(_))));
    c.sealed_versions = true;
    let plan = c.plan(vec![replayed("a.txt"), replayed("gone.txt")]);
    assert_eq!(plan.get(&p("a.txt")), Some(&Action::Upload { base: 1 }));
    assert_eq!(
        plan.get(&p("gone.txt")),
        Some(&Action::DeleteThere {
            base: 1,
            kind: EntryKind::File
        })
    );
    // A newer sealed number is newer, whatever the times.
    let plan = c.plan(vec![entry("a.txt", 6, false, 100)]);
    assert!(matches!(
        plan.get(&p("a.txt")),
        Some(Action::BothChanged(_) | Action::Apply(_))
    ));
}

#[test]
fn a_file_unknown_to_the_state_where_the_server_deleted_it_is_checked_first() {
    let c = Case::new().here("a.txt", fp(Kind::File, 1));
    assert!(matches!(
        c.plan(vec![entry("a.txt", 4, true, 0)]).get(&p("a.txt")),
        Some(Action::Returning(_))
    ));
}

#[test]
fn the_guard_holds_back_a_side_that_deletes_too_much() {
    let mut plan: BTreeMap<SyncPath, Action> = (0..30)
        .map(|i| {
            (
                p(&format!("f{i}")),
                Action::DeleteThere {
                    base: 1,
                    kind: EntryKind::File,
                },
            )
        })
        .collect();
    plan.insert(
        p("d"),
        Action::DeleteThere {
            base: 1,
            kind: EntryKind::Dir,
        },
    );
    plan.insert(p("new"), Action::Upload { base: 0 });
    let guard = DeleteGuard::default();
    let mut small = plan.clone();
    assert_eq!(guard.hold(&mut small, 1000), Held::default(), "3% of 1000");
    let held = guard.hold(&mut plan, 40);
    assert_eq!(held, Held { there: 30 });
    assert_eq!(
        plan.len(),
        1,
        "the directory is held too, the upload goes: {plan:?}"
    );
    let mut few: BTreeMap<SyncPath, Action> = (0..3)
        .map(|i| {
            (
                p(&format!("f{i}")),
                Action::DeleteHere(entry(&format!("f{i}"), 2, true, 0)),
            )
        })
        .collect();
    assert_eq!(guard.hold(&mut few, 3), Held::default(), "under min_files");
}

fn arb_fp() -> impl Strategy<Value = Option<Fingerprint>> {
    prop_oneof![
        Just(None),
        (1i64..4).prop_map(|t| Some(fp(Kind::File, t))),
        Just(Some(fp(Kind::Dir, 1))),
    ]
}

proptest! {
    /// Whatever the local, synced and server views, no deletion is planned on either side for a
    /// path under an unknown subtree or one that is ignored, and nothing under an unknown
    /// subtree is written.
    #[test]
    fn unknown_and_ignored_paths_are_never_deleted(
        views in proptest::collection::vec(
            (0usize..6, arb_fp(), proptest::option::of(1u64..5), proptest::option::of((1u64..6, any::<bool>()))),
            1..12,
        ),
        unknown in 0usize..3,
    ) {
        let names = ["u/a", "u/b", "u", "x.log", "c", "d/e"];
        let mut c = Case::new();
        let mut remote = Vec::new();
        for (i, here, syn, there) in views {
            let name = names[i];
            // The scan never lists an ignored path.
            if let (Some(f), false) = (here, name.ends_with(".log")) {
                c = c.here(name, f);
            }
            if let Some(v) = syn {
                c = c.synced(name, synced(v, 0));
            }
            if let Some((v, deleted)) = there {
                remote.push(entry(name, v, deleted, 0));
            }
        }
        if unknown > 0 {
            c.local.unknown.push((p("u"), "io error".into()));
        }
        let ignored = |path: &SyncPath, _: bool| path.as_str().ends_with(".log");
        let plan = c.plan_with(remote, &ignored);
        for (path, action) in &plan {
            let protected = ignored(path, false)
                || (unknown > 0 && c.local.unknown_reason(path).is_some());
            if protected {
                prop_assert!(
                    matches!(action, Action::Forget | Action::Defer { .. }),
                    "{path}: {action:?}"
                );
            }
        }
    }
}

/// A re-scan after the server forgot old deletions: a synced path the whole listing lacks is
/// offered again (from version 0), or dropped if it was deleted here too; never deleted here.
/// What the listing shows is believed as ever: a remembered deletion still deletes, an edit is
/// applied, an unchanged path is no work. Without the re-scan, the same listing deletes nothing
/// here either (a missing path is no news), but nothing is offered again.
#[test]
fn a_rescan_offers_again_what_the_server_no_longer_lists_and_deletes_nothing_for_it() {
    let mut c = Case::new()
        .synced("kept.txt", synced(2, 200))
        .here("kept.txt", fp(Kind::File, 1))
        .synced("edited-here.txt", synced(2, 200))
        .here("edited-here.txt", fp(Kind::File, 9))
        .synced("gone-here-too.txt", synced(3, 300))
        .synced("deleted-there.txt", synced(1, 100))
        .here("deleted-there.txt", fp(Kind::File, 1))
        .synced("edited-there.txt", synced(1, 100))
        .here("edited-there.txt", fp(Kind::File, 1))
        .synced("same.txt", synced(4, 400))
        .here("same.txt", fp(Kind::File, 1));
    let mut same = entry("same.txt", 4, false, 400);
    same.manifest = Some(Manifest::empty().id());
    let listing = || {
        vec![
            entry("deleted-there.txt", 2, true, 900),
            entry("edited-there.txt", 2, false, 900),
            same.clone(),
        ]
    };
    let quiet = c.plan(listing());
    for path in ["kept.txt", "gone-here-too.txt", "same.txt"] {
        assert!(
            !matches!(
                quiet.get(&p(path)),
                Some(Action::Upload { .. } | Action::DeleteHere(_) | Action::Drop)
            ),
            "{path}: {quiet:?}"
        );
    }
    c.rescan = true;
    let plan = c.plan(listing());
    assert_eq!(plan.get(&p("kept.txt")), Some(&Action::Upload { base: 0 }));
    assert_eq!(
        plan.get(&p("edited-here.txt")),
        Some(&Action::Upload { base: 0 })
    );
    assert_eq!(plan.get(&p("gone-here-too.txt")), Some(&Action::Drop));
    assert!(matches!(
        plan.get(&p("deleted-there.txt")),
        Some(Action::DeleteHere(e)) if e.version == 2
    ));
    assert!(matches!(
        plan.get(&p("edited-there.txt")),
        Some(Action::Apply(e)) if e.version == 2
    ));
    assert_eq!(plan.get(&p("same.txt")), None);
    assert!(
        !plan
            .values()
            .any(|a| matches!(a, Action::DeleteThere { .. })),
        "{plan:?}"
    );
}
