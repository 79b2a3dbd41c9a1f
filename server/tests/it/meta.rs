//! The metadata contract (`lbsync_server::meta`), written once over `&dyn FolderMeta`,
//! `&dyn UserMeta` and `&dyn ScopeMeta`, and run against every backend: sled (always) and
//! PostgreSQL (when `LBSYNC_TEST_METADATA` holds a `postgres://` URL of a server where databases
//! may be created: each test makes a database of its own and drops it after).

#![allow(clippy::unwrap_used)] // tests: a failure is a test failure

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};

use lbsync_chunkstore::{Chunk, ChunkId, ChunkStore, Manifest, PackStore};
use lbsync_proto::{CommitOutcome, Entry, EntryKind, SyncPath, pb};
use lbsync_server::Error;
use lbsync_server::folders::{Backlog, GROUP_TXN_COMMITS, JOURNAL_SCAN_LIMIT};
use lbsync_server::meta::{FolderMeta, Folders, Scopes, Users};
use lbsync_server::pg::PgMeta;
use lbsync_server::users::Level;

// ---------------------------------------------------------------------------------------------
// Backends.

/// One backend's metadata over a chunk store in a temp dir; `again` opens a second handle on the
/// same metadata (a second server).
struct Backend {
    folders: Folders,
    users: Users,
    scopes: Scopes,
    store: PackStore,
    again: Box<dyn Fn() -> Folders>,
    _dir: tempfile::TempDir,
    _db: Option<PgDb>,
}

/// The sled backend, as `--store DIR` opens it.
fn sled_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let (folders, users, scopes) = sled_meta::open(&store);
    let again_store = store.clone();
    Backend {
        folders,
        users,
        scopes,
        store,
        again: Box::new(move || sled_meta::open(&again_store).0),
        _dir: dir,
        _db: None,
    }
}

/// The PostgreSQL backend on a fresh database, or `None` (the test skips) without a server.
fn pg_backend(test: &str) -> Option<Backend> {
    let db = PgDb::create(test)?;
    let meta = PgMeta::connect(&db.url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.clone();
    Some(Backend {
        folders: meta.folders(),
        users: meta.users(),
        scopes: meta.scopes(),
        store: PackStore::open(dir.path()).unwrap(),
        again: Box::new(move || PgMeta::connect(&url).unwrap().folders()),
        _dir: dir,
        _db: Some(db),
    })
}

/// The sled backend's three, as `Backend::local` opens them.
mod sled_meta {
    use super::*;
    use lbsync_server::folders::SledFolders;
    use lbsync_server::scope::SledScopes;
    use lbsync_server::users::SledUsers;

    pub(super) fn open(store: &PackStore) -> (Folders, Users, Scopes) {
        let f = SledFolders::open(store.db()).unwrap();
        let s = SledScopes::open(store, &f).unwrap();
        (
            Arc::new(f),
            Arc::new(SledUsers::open(store.db()).unwrap()),
            Arc::new(s),
        )
    }
}

/// A database of one test's own (`lbsync_testsupport`: skipped with the reason outside CI when no
/// server is configured, a failure in CI), and a plain client of it to look at what the backend
/// stored.
struct PgDb(lbsync_testsupport::services::PgService);

impl PgDb {
    fn create(test: &str) -> Option<Self> {
        lbsync_testsupport::services::postgres(test).map(Self)
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.0.url, postgres::NoTls).unwrap()
    }
}

impl std::ops::Deref for PgDb {
    type Target = lbsync_testsupport::services::PgService;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Two tests per contract function: `NAME::sled` and `NAME::pg`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sled() {
                super::$name(&super::sled_backend());
            }
            #[test]
            fn pg() {
                if let Some(b) = super::pg_backend(concat!("meta::", stringify!($name), "::pg")) {
                    super::$name(&b);
                }
            }
        }
    )*};
}

contract!(
    seqs_are_dense_and_the_conflict_rule_holds,
    a_batch_commits_in_order,
    racing_servers_win_each_base_once,
    replays_compact_the_journal_and_scan_from_far_behind,
    history_versions_and_pruning,
    old_tombstones_expire_under_a_horizon,
    keys_make_a_folder_encrypted_once,
    tokens_owners_and_members,
    scopes_answer_what_a_folder_may_reach,
);

// ---------------------------------------------------------------------------------------------
// Helpers.

fn path(p: &str) -> SyncPath {
    SyncPath::new(p).unwrap()
}

fn dir(p: &str) -> Entry {
    Entry::dir(path(p), "d")
}

fn gone(p: &str) -> Entry {
    Entry::tombstone(path(p), EntryKind::Dir, "d")
}

fn landed(o: CommitOutcome) -> Entry {
    match o {
        CommitOutcome::Committed(e) => e,
        CommitOutcome::Conflict(e) => panic!("conflict with {e:?}"),
    }
}

fn conflict(o: CommitOutcome) -> Entry {
    match o {
        CommitOutcome::Conflict(e) => e,
        CommitOutcome::Committed(e) => panic!("committed {e:?}"),
    }
}

/// Every change after `cursor` and the head: the backlog and all its scan pages.
fn changes_since(f: &dyn FolderMeta, folder: &str, cursor: u64) -> (Vec<Entry>, u64) {
    match f.backlog(folder, cursor).unwrap() {
        (Backlog::Compacted(entries), head) => (entries, head),
        (Backlog::Scan, head) => {
            let (mut all, mut after) = (Vec::new(), None::<Vec<u8>>);
            loop {
                let (page, next) = f
                    .scan_page(folder, cursor, head, after.as_deref(), 64)
                    .unwrap();
                assert!(page.len() <= 64);
                all.extend(page);
                match next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            all.sort_by_key(|e| e.seq);
            (all, head)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Folders.

fn seqs_are_dense_and_the_conflict_rule_holds(b: &Backend) {
    let f = &*b.folders;
    assert!(matches!(f.head("f"), Err(Error::NotFound(_))));
    assert!(f.ensure("../x").is_err());
    assert_eq!(f.ensure("f").unwrap(), 0);
    assert_eq!(f.ensure("f").unwrap(), 0);
    f.ensure("e").unwrap();
    assert_eq!(f.names().unwrap(), ["e", "f"]);
    assert!(matches!(
        f.current("nope", &path("a")),
        Err(Error::NotFound(_))
    ));

    let a1 = landed(f.commit("f", dir("a"), 0).unwrap());
    assert_eq!((a1.version, a1.seq), (1, 1));
    assert!(a1.committed_ns > 0);
    // A second creation, and a stale base, conflict and show the current entry.
    assert_eq!(conflict(f.commit("f", dir("a"), 0).unwrap()), a1);
    let a2 = landed(f.commit("f", dir("a"), 1).unwrap());
    assert_eq!((a2.version, a2.seq), (2, 2));
    assert_eq!(conflict(f.commit("f", dir("a"), 1).unwrap()).version, 2);
    // A base for a path that never existed: a version-0 tombstone.
    let never = conflict(f.commit("f", dir("b"), 5).unwrap());
    assert_eq!((never.version, never.deleted), (0, true));
    // Deleted, then made again over its tombstone (a plain folder).
    let a3 = landed(f.commit("f", gone("a"), 2).unwrap());
    assert_eq!((a3.version, a3.seq, a3.deleted), (3, 3, true));
    let a4 = landed(f.commit("f", dir("a"), 0).unwrap());
    assert_eq!((a4.version, a4.seq), (4, 4));
    assert_eq!(f.head("f").unwrap(), 4);
    assert_eq!(f.current("f", &path("a")).unwrap(), Some(a4));
    assert_eq!(f.current("f", &path("b")).unwrap(), None);
    assert_eq!(f.head("e").unwrap(), 0, "folders have seqs of their own");
}

fn a_batch_commits_in_order(b: &Backend) {
    let f = &*b.folders;
    f.ensure("f").unwrap();
    f.commit("f", dir("a"), 0).unwrap();
    let mut batch = vec![(dir("a"), 1), (dir("a"), 2), (dir("a"), 1), (dir("b"), 0)];
    let n = GROUP_TXN_COMMITS + 10;
    batch.extend((0..n).map(|i| (dir(&format!("many/{i}")), 0)));
    let (outcomes, failed) = f.commit_batch("f", batch).unwrap();
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(outcomes.len(), n + 4);
    let at = |o: &CommitOutcome| match o {
        CommitOutcome::Committed(e) => Some((e.version, e.seq)),
        CommitOutcome::Conflict(_) => None,
    };
    // The path twice sees its first commit; the stale base conflicts without stopping the rest.
    assert_eq!(at(&outcomes[0]), Some((2, 2)));
    assert_eq!(at(&outcomes[1]), Some((3, 3)));
    assert_eq!(at(&outcomes[2]), None);
    let seqs: Vec<u64> = outcomes[3..].iter().map(|o| at(o).unwrap().1).collect();
    assert_eq!(seqs, (4..4 + n as u64 + 1).collect::<Vec<_>>());
    assert_eq!(f.head("f").unwrap(), 4 + n as u64);
    assert_eq!(f.current("f", &path("a")).unwrap().unwrap().version, 3);
    let (changes, head) = changes_since(f, "f", 3);
    assert_eq!(head, 4 + n as u64);
    assert_eq!(changes.len(), n + 1);
    // A batch for a folder that does not exist.
    assert!(matches!(
        f.commit_batch("nope", vec![(dir("a"), 0)]),
        Err(Error::NotFound(_))
    ));
}

fn racing_servers_win_each_base_once(b: &Backend) {
    b.folders.ensure("r").unwrap();
    landed(b.folders.commit("r", dir("p"), 0).unwrap());
    const WINS: u64 = 60;
    let servers = [b.folders.clone(), (b.again)()];
    let start = Arc::new(Barrier::new(servers.len()));
    let threads: Vec<_> = servers
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut won = Vec::new();
                loop {
                    let base = f.current("r", &path("p")).unwrap().unwrap().version;
                    if base > WINS {
                        return won;
                    }
                    // A second path too, so each transaction writes more than one row.
                    let batch = vec![(dir("p"), base), (dir(&format!("side/{i}/{base}")), 0)];
                    let (outcomes, failed) = f.commit_batch("r", batch).unwrap();
                    assert!(failed.is_none());
                    if let CommitOutcome::Committed(e) = &outcomes[0] {
                        assert_eq!(e.version, base + 1);
                        won.push((base, e.seq));
                    }
                    for o in &outcomes[1..] {
                        won.push((0, landed(o.clone()).seq));
                    }
                }
            })
        })
        .collect();
    let mut bases = Vec::new();
    let mut seqs = Vec::new();
    for t in threads {
        for (base, seq) in t.join().unwrap() {
            if base > 0 {
                bases.push(base);
            }
            seqs.push(seq);
        }
    }
    bases.sort();
    assert_eq!(bases, (1..=WINS).collect::<Vec<_>>(), "each base wins once");
    seqs.sort();
    let head = b.folders.head("r").unwrap();
    assert_eq!(seqs, (2..=head).collect::<Vec<_>>(), "dense seqs");
}

fn replays_compact_the_journal_and_scan_from_far_behind(b: &Backend) {
    let f = &*b.folders;
    f.ensure("f").unwrap();
    let paths = 300u64;
    let commits = JOURNAL_SCAN_LIMIT + 200;
    let mut latest: HashMap<String, Entry> = HashMap::new();
    let mut all = Vec::new();
    for start in (0..commits).step_by(100) {
        let batch: Vec<(Entry, u64)> = (start..(start + 100).min(commits))
            .map(|i| {
                let p = format!("p{:03}", i % paths);
                let base = latest.get(&p).map_or(0, |e| e.version);
                // Every seventh a deletion, re-created the next time round.
                let e = if i % 7 == 3 && base > 0 && !latest[&p].deleted {
                    gone(&p)
                } else if latest.get(&p).is_some_and(|e| e.deleted) {
                    return (dir(&p), 0);
                } else {
                    dir(&p)
                };
                (e, base)
            })
            .collect();
        let (outcomes, failed) = f.commit_batch("f", batch).unwrap();
        assert!(failed.is_none());
        for o in outcomes {
            let e = landed(o);
            latest.insert(e.path.to_string(), e.clone());
            all.push(e);
        }
    }
    let head = f.head("f").unwrap();
    assert_eq!(head, commits);
    // From far behind: pages of current entries.
    let cursor = 150;
    let (backlog, h) = f.backlog("f", cursor).unwrap();
    assert!(matches!(backlog, Backlog::Scan), "{backlog:?}");
    assert_eq!(h, head);
    let (mut seen, _) = changes_since(f, "f", cursor);
    seen.sort_by(|a, b| a.path.cmp(&b.path));
    let mut want: Vec<Entry> = latest
        .values()
        .filter(|e| e.seq > cursor)
        .cloned()
        .collect();
    want.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(seen, want);
    // Near the head, the journal: the latest entry of each path changed, in seq order.
    let (backlog, _) = f.backlog("f", head - 10).unwrap();
    let Backlog::Compacted(near) = backlog else {
        panic!("near the head the journal is read")
    };
    assert_eq!(near, all[all.len() - 10..]);
    // A replay from any cursor brings a client holding the folder as of it to the folder now.
    let state_at = |seq: u64| -> BTreeMap<String, (u64, bool)> {
        all.iter()
            .filter(|e| e.seq <= seq)
            .map(|e| (e.path.to_string(), (e.version, e.deleted)))
            .collect()
    };
    let now = state_at(head);
    for cursor in (0..=head).step_by(97).chain([head - 1, head]) {
        let mut state = state_at(cursor);
        let (changes, h) = changes_since(f, "f", cursor);
        assert_eq!(h, head);
        assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq), "seq order");
        for e in changes {
            assert!(e.seq > cursor);
            state.insert(e.path.to_string(), (e.version, e.deleted));
        }
        assert_eq!(state, now, "from {cursor}");
    }
    assert!(matches!(
        f.backlog("f", head + 1),
        Err(Error::CursorAhead { .. })
    ));
    // Commits keep one journal record a path: there is nothing to compact.
    assert_eq!(f.compact_journal("f", true).unwrap(), 0);
    assert_eq!(f.compact_journal("f", false).unwrap(), 0);
    assert_eq!(f.current_entries("f").unwrap().len(), paths as usize);
}

fn history_versions_and_pruning(b: &Backend) {
    let f = &*b.folders;
    f.ensure("f").unwrap();
    for v in 0..5 {
        landed(
            f.commit("f", Entry::dir(path("p"), &format!("d{v}")), v)
                .unwrap(),
        );
    }
    landed(f.commit("f", dir("q"), 0).unwrap());
    let (newest, more) = f.history("f", &path("p"), 3).unwrap();
    assert_eq!(
        newest.iter().map(|e| e.version).collect::<Vec<_>>(),
        [5, 4, 3]
    );
    assert!(more);
    let (every, more) = f.history("f", &path("p"), 10).unwrap();
    assert_eq!(every.len(), 5);
    assert!(!more);
    assert_eq!(every[0], f.current("f", &path("p")).unwrap().unwrap());
    assert_eq!(f.version("f", &path("p"), 2).unwrap().unwrap().device, "d1");
    assert_eq!(f.version("f", &path("p"), 9).unwrap(), None);
    assert!(matches!(
        f.history("nope", &path("p"), 1),
        Err(Error::NotFound(_))
    ));

    let mut kept = Vec::new();
    let dry = f
        .prune_history("f", 2, 0, true, &mut |e: &Entry| {
            kept.push((e.path.to_string(), e.version))
        })
        .unwrap();
    assert_eq!(dry, (3, 3));
    kept.sort();
    assert_eq!(kept, [("p".into(), 4), ("p".into(), 5), ("q".into(), 1)]);
    assert_eq!(
        f.history("f", &path("p"), 10).unwrap().0.len(),
        5,
        "a dry run"
    );
    // Young versions are kept however many.
    assert_eq!(
        f.prune_history("f", 1, i64::MAX, false, &mut |_| {})
            .unwrap(),
        (6, 0)
    );
    assert_eq!(
        f.prune_history("f", 2, 0, false, &mut |_| {}).unwrap(),
        (3, 3)
    );
    assert_eq!(f.version("f", &path("p"), 3).unwrap(), None);
    assert!(f.version("f", &path("p"), 4).unwrap().is_some());
    assert_eq!(
        f.prune_history("f", 2, 0, false, &mut |_| {}).unwrap(),
        (3, 0)
    );
}

fn old_tombstones_expire_under_a_horizon(b: &Backend) {
    let f = &*b.folders;
    f.ensure("f").unwrap();
    for p in ["old-gone", "new-gone", "old-live"] {
        landed(f.commit("f", dir(p), 0).unwrap());
    }
    landed(f.commit("f", dir("old-gone"), 1).unwrap());
    let old = landed(f.commit("f", gone("old-gone"), 2).unwrap());
    let cutoff = old.committed_ns + 1;
    let new = landed(f.commit("f", gone("new-gone"), 1).unwrap());
    assert!(new.committed_ns >= cutoff, "commit times go forward");
    let head = f.head("f").unwrap();

    assert_eq!(
        f.expire_tombstones("f", cutoff, true).unwrap(),
        (1, old.seq)
    );
    assert_eq!(f.expired_seq("f").unwrap(), 0, "a dry run changes nothing");
    assert_eq!(f.current_entries("f").unwrap().len(), 3);

    assert_eq!(
        f.expire_tombstones("f", cutoff, false).unwrap(),
        (1, old.seq)
    );
    assert_eq!(f.expired_seq("f").unwrap(), old.seq);
    let mut paths: Vec<_> = f
        .current_entries("f")
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string(), e.deleted))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [("new-gone".into(), true), ("old-live".into(), false)]
    );
    assert_eq!(
        f.history("f", &path("old-gone"), 10).unwrap(),
        (vec![], false)
    );
    let (all, h) = changes_since(f, "f", 0);
    assert_eq!(h, head, "the head stays");
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|e| e.path.as_str() != "old-gone"));

    let later = new.committed_ns + 1;
    assert_eq!(
        f.expire_tombstones("f", later, false).unwrap(),
        (1, new.seq)
    );
    // Nothing more to expire: the horizon stays where it was.
    assert_eq!(
        f.expire_tombstones("f", later, false).unwrap(),
        (0, new.seq)
    );
    assert_eq!(f.expired_seq("f").unwrap(), new.seq);
    // A forgotten path is new again.
    assert_eq!(
        landed(f.commit("f", dir("old-gone"), 0).unwrap()).version,
        1
    );
    assert_eq!(f.expired_seq("f").unwrap(), new.seq);
    assert_eq!(f.expired_seq("nope").unwrap(), 0);
}

fn keys_make_a_folder_encrypted_once(b: &Backend) {
    let f = &*b.folders;
    let wrapped = |label: &str| {
        vec![pb::WrappedKey {
            kind: "passphrase".into(),
            label: label.into(),
            age: vec![1, 2, 3].into(),
        }]
    };
    assert!(matches!(
        f.set_keys("e", 0, wrapped("a")),
        Err(Error::NotFound(_))
    ));
    f.ensure("e").unwrap();
    f.ensure("p").unwrap();
    assert!(!f.encrypted("e").unwrap());
    assert!(!f.encrypted("nope").unwrap());
    assert_eq!(f.keys("e").unwrap(), pb::FolderKeys::default());
    assert!(matches!(f.keys("nope"), Err(Error::NotFound(_))));
    let before = f.encrypted_count();

    let k1 = f.set_keys("e", 0, wrapped("a")).unwrap();
    assert_eq!(k1.generation, 1);
    assert!(matches!(
        f.set_keys("e", 0, wrapped("b")),
        Err(Error::Aborted(_))
    ));
    let k2 = f.set_keys("e", 1, wrapped("b")).unwrap();
    assert_eq!(k2.generation, 2);
    assert_eq!(f.keys("e").unwrap(), k2);
    assert!(f.encrypted("e").unwrap());
    assert_eq!(f.encrypted_count(), before + 1);

    // Entries checked for a plain folder do not land in one made encrypted meanwhile.
    let (outcomes, failed) = f
        .commit_batch_checked("e", vec![(dir("x"), 0)], false)
        .unwrap();
    assert!(outcomes.is_empty());
    assert!(matches!(failed, Some(Error::Precondition(_))), "{failed:?}");
    assert_eq!(f.head("e").unwrap(), 0);
    // An encrypted creation over a tombstone is a conflict.
    landed(f.commit("e", dir("x"), 0).unwrap());
    landed(f.commit("e", gone("x"), 1).unwrap());
    assert_eq!(conflict(f.commit("e", dir("x"), 0).unwrap()).version, 2);

    // A folder with entries in the clear never becomes encrypted.
    landed(f.commit("p", dir("x"), 0).unwrap());
    let err = f.set_keys("p", 0, wrapped("a")).unwrap_err();
    assert!(matches!(err, Error::Precondition(_)), "{err}");
    assert!(err.to_string().contains("1 entry"), "{err}");
    assert!(!f.encrypted("p").unwrap());
}

// ---------------------------------------------------------------------------------------------
// Users.

fn tokens_owners_and_members(b: &Backend) {
    let u = &*b.users;
    assert!(!u.any_tokens());
    assert!(matches!(
        u.create_token("alice", false, None),
        Err(Error::NotFound(_))
    ));
    u.add_user("alice").unwrap();
    assert!(matches!(u.add_user("alice"), Err(Error::BadRequest(_))));
    assert!(u.add_user("../x").is_err());
    for n in ["bob", "carol"] {
        u.add_user(n).unwrap();
    }
    assert_eq!(u.user_names().unwrap(), ["alice", "bob", "carol"]);
    assert!(u.user_exists("bob").unwrap() && !u.user_exists("dave").unwrap());

    let (info, token) = u.create_token("alice", true, Some("docs")).unwrap();
    assert!(u.any_tokens());
    assert_eq!(info.id.len(), 8);
    assert!(token.starts_with(&format!("lbs_{}_", info.id)));
    let got = u.authenticate(&token).unwrap().unwrap();
    assert_eq!(got, info);
    assert!(got.read_only && got.folder.as_deref() == Some("docs"));
    // By the secret only: a wrong secret, a malformed token, an unknown id.
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let other_id = format!("lbs_00000000_{}", token.rsplit('_').next().unwrap());
    for bad in [
        wrong.as_str(),
        "lbs_",
        "garbage",
        "lbs_00000000_00",
        &other_id,
    ] {
        assert!(u.authenticate(bad).unwrap().is_none(), "{bad}");
    }
    let (info2, _) = u.create_token("bob", false, None).unwrap();
    let mut listed = u.tokens().unwrap();
    let mut want = vec![info.clone(), info2];
    want.sort_by(|a, b| a.id.cmp(&b.id));
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed, want);
    assert!(u.token_live(&info.id).unwrap());
    assert!(u.revoke_token(&info.id).unwrap());
    assert!(!u.revoke_token(&info.id).unwrap());
    assert!(u.authenticate(&token).unwrap().is_none());
    assert!(!u.token_live(&info.id).unwrap());

    // Owners: the first claim wins, also when claims race.
    assert_eq!(u.owner("a").unwrap(), None);
    assert_eq!(u.claim("a", "alice").unwrap(), "alice");
    assert_eq!(u.claim("a", "bob").unwrap(), "alice");
    let start = Arc::new(Barrier::new(4));
    let claims: Vec<_> = ["alice", "bob", "carol", "alice"]
        .into_iter()
        .map(|who| {
            let (u, start) = (b.users.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                u.claim("raced", who).unwrap()
            })
        })
        .collect();
    let owners: Vec<String> = claims.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(owners.iter().all(|o| *o == owners[0]), "{owners:?}");
    assert_eq!(u.owner("raced").unwrap().as_ref(), Some(&owners[0]));

    // Levels.
    assert_eq!(u.level("a", "alice").unwrap(), Level::Write);
    assert_eq!(u.level("a", "bob").unwrap(), Level::None);
    u.share("a", "bob", true).unwrap();
    u.share("a", "carol", false).unwrap();
    assert!(matches!(
        u.share("a", "alice", true),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        u.share("a", "dave", true),
        Err(Error::NotFound(_))
    ));
    assert_eq!(u.level("a", "bob").unwrap(), Level::Read);
    assert_eq!(u.level("a", "carol").unwrap(), Level::Write);
    assert_eq!(
        u.members("a").unwrap(),
        [("bob".to_owned(), true), ("carol".to_owned(), false)]
    );
    u.share("a", "bob", false).unwrap();
    assert_eq!(
        u.level("a", "bob").unwrap(),
        Level::Write,
        "a share replaced"
    );
    u.share("a", "bob", true).unwrap();
    let mut want = vec![("a".to_owned(), "read-only")];
    if owners[0] == "bob" {
        want.push(("raced".to_owned(), "owner"));
    }
    assert_eq!(u.folders_of("bob").unwrap(), want);
    assert!(u.unshare("a", "bob").unwrap());
    assert!(!u.unshare("a", "bob").unwrap());
    assert_eq!(u.level("a", "bob").unwrap(), Level::None);
    // A folder named like a prefix of another is not confused with it.
    assert_eq!(u.level("a2", "carol").unwrap(), Level::None);
}

// ---------------------------------------------------------------------------------------------
// Scopes.

fn scopes_answer_what_a_folder_may_reach(b: &Backend) {
    let s = &*b.scopes;
    let store: &dyn ChunkStore = &b.store;
    let chunk = Chunk::new(b"hello scope".to_vec());
    let other = Chunk::new(b"another chunk".to_vec());
    store.insert_batch(&[chunk.clone(), other.clone()]).unwrap();
    let m = Manifest::new(vec![chunk.chunk_ref()]);
    store.put_manifest(&m).unwrap();
    assert!(!s.has_chunk("a", &chunk.id()).unwrap());
    s.add_manifest("a", &m, true).unwrap();
    s.add_manifest("a", &m, true).unwrap();
    assert!(s.has_manifest("a", &m.id()).unwrap());
    assert!(s.has_chunk("a", &chunk.id()).unwrap());
    assert!(!s.has_chunk("b", &chunk.id()).unwrap());
    assert!(!s.has_manifest("b", &m.id()).unwrap());
    s.add_manifest("c", &m, false).unwrap();
    assert!(s.has_manifest("c", &m.id()).unwrap() && !s.has_chunk("c", &chunk.id()).unwrap());

    let ids = [other.id(), chunk.id(), other.id()];
    assert_eq!(s.outside("a", &ids).unwrap(), [other.id(), other.id()]);
    assert_eq!(
        s.missing(store, "a", &ids).unwrap(),
        [other.id()],
        "each once"
    );
    assert_eq!(
        s.missing(store, "b", &ids).unwrap(),
        [other.id(), chunk.id()]
    );
    s.add_chunks("b", &[other.id(), other.id()]).unwrap();
    assert_eq!(s.missing(store, "b", &ids).unwrap(), [chunk.id()]);
    // In scope but not stored (collected since) is missing too, and pruned.
    let lost = ChunkId::of(b"never stored");
    s.add_chunks("b", &[lost]).unwrap();
    assert!(s.outside("b", &[lost]).unwrap().is_empty());
    assert_eq!(s.missing(store, "b", &[lost]).unwrap(), [lost]);
    assert_eq!(
        s.prune(store).unwrap(),
        1,
        "the entry of a chunk not stored"
    );
    assert_eq!(s.outside("b", &[lost]).unwrap(), [lost]);
    assert!(s.has_chunk("a", &chunk.id()).unwrap());
    assert!(s.has_manifest("a", &m.id()).unwrap());
    // Many ids at once.
    let many: Vec<ChunkId> = (0..20_000u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    s.add_chunks("big", &many).unwrap();
    assert!(s.outside("big", &many).unwrap().is_empty());
    assert_eq!(s.outside("big", &[lost]).unwrap(), [lost]);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only: what sled has no counterpart for.

/// The tokens table holds hashes, never a secret.
#[test]
fn pg_stores_tokens_as_hashes() {
    let Some(b) = pg_backend("meta::pg_stores_tokens_as_hashes") else {
        return;
    };
    b.users.add_user("alice").unwrap();
    let (_, token) = b.users.create_token("alice", false, None).unwrap();
    let secret = token.rsplit('_').next().unwrap().to_owned();
    let mut c = b._db.as_ref().unwrap().client();
    for row in c
        .query("SELECT hash, id, user_name FROM tokens", &[])
        .unwrap()
    {
        let hash: Vec<u8> = row.get(0);
        assert_eq!(hash.len(), 32);
        let text = format!(
            "{hash:02x?}{}{}",
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        );
        assert!(!text.contains(&secret[..16]));
        assert!(
            !hash
                .windows(8)
                .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
        );
    }
}

/// Servers starting at once on a fresh database migrate one after another; all get going.
#[test]
fn pg_servers_starting_at_once_migrate_once() {
    let Some(db) = PgDb::create("meta::pg_servers_starting_at_once_migrate_once") else {
        return;
    };
    let start = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, start) = (db.url.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                PgMeta::connect(&url).map(|m| m.folders().ensure("f").unwrap())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), 0);
    }
    let r = db
        .client()
        .query_one(
            "SELECT count(*), count(DISTINCT version) FROM refinery_schema_history",
            &[],
        )
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (files, files),
        "each once"
    );
}

/// The service calls the traits from `spawn_blocking` threads of a multi-thread runtime, and
/// may drop its handles on an async task.
#[test]
fn pg_works_from_blocking_threads_of_a_runtime() {
    let Some(db) = PgDb::create("meta::pg_works_from_blocking_threads_of_a_runtime") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = db.url.clone();
        let meta = tokio::task::spawn_blocking(move || PgMeta::connect(&url))
            .await
            .unwrap()
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let f = meta.folders();
                tokio::task::spawn_blocking(move || {
                    f.ensure("f").unwrap();
                    landed(f.commit("f", dir(&format!("p{i}")), 0).unwrap()).seq
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
        // Dropped on a worker thread, not a blocking one.
        tokio::spawn(async move { drop(meta) }).await.unwrap();
    });
}

/// A commit through one server wakes the other's Changes streams (its broadcast) within a
/// second, through LISTEN/NOTIFY; after its connection is killed the listener reconnects and
/// catches up with every folder's head.
#[test]
fn pg_listen_carries_commits_between_servers() {
    use std::time::Duration;
    let Some(db) = PgDb::create("meta::pg_listen_carries_commits_between_servers") else {
        return;
    };
    let one = PgMeta::connect(&db.url).unwrap();
    let two = PgMeta::connect(&db.url).unwrap();
    two.folders().ensure("w").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::broadcast::channel(64);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let listener = tokio::spawn(lbsync_server::pg::listen(&db.url, tx, stopped));
        wait_for(&mut rx, "w", 0)
            .await
            .expect("the heads after LISTEN");
        let commit = |n: u64| {
            let f = one.folders();
            tokio::task::spawn_blocking(move || {
                landed(f.commit("w", dir(&format!("p{n}")), 0).unwrap()).seq
            })
        };
        let started = std::time::Instant::now();
        assert_eq!(commit(1).await.unwrap(), 1);
        assert_eq!(wait_for(&mut rx, "w", 1).await.unwrap(), 1);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{took:?}");

        // Kill the listener's session; a commit made meanwhile arrives after the reconnect.
        let url = db.url.clone();
        let killed = tokio::task::spawn_blocking(move || {
            postgres::Client::connect(&url, postgres::NoTls)
                .unwrap()
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'lbsync-listen' AND datname = current_database()",
                    &[],
                )
                .unwrap()
                .len()
        })
        .await
        .unwrap();
        assert_eq!(killed, 1);
        assert_eq!(commit(2).await.unwrap(), 2);
        assert_eq!(
            wait_for(&mut rx, "w", 2)
                .await
                .expect("caught up after a reconnect"),
            2
        );

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), listener)
            .await
            .expect("the listener stops at shutdown")
            .unwrap();
    });
}

/// Waits (10 s at most) for a commit of `folder` at or past `seq` in a broadcast; returns its seq.
async fn wait_for(
    rx: &mut tokio::sync::broadcast::Receiver<(Arc<str>, u64)>,
    folder: &str,
    seq: u64,
) -> Result<u64, tokio::time::error::Elapsed> {
    let wait = async {
        loop {
            let (f, s) = rx.recv().await.unwrap();
            if &*f == folder && s >= seq {
                return s;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), wait).await
}

/// Figures, not a check: commits a second through PostgreSQL, one at a time, in batches, and
/// from 4 threads at once. `cargo test -p lbsync-server --test it pg_commit_rates -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement: run it with --ignored --nocapture"]
fn pg_commit_rates() {
    let Some(b) = pg_backend("meta::pg_commit_rates") else {
        return;
    };
    let f = &b.folders;
    f.ensure("f").unwrap();
    let rate = |n: usize, t: std::time::Instant| n as f64 / t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    for i in 0..500 {
        landed(f.commit("f", dir(&format!("one/{i}")), 0).unwrap());
    }
    eprintln!("one at a time: {:.0} commits/s", rate(500, t));
    let t = std::time::Instant::now();
    for round in 0..10 {
        let batch = (0..1000)
            .map(|i| (dir(&format!("batch/{round}/{i}")), 0))
            .collect();
        assert!(f.commit_batch("f", batch).unwrap().1.is_none());
    }
    eprintln!("batches of 1000: {:.0} commits/s", rate(10_000, t));
    let t = std::time::Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let f = (b.again)();
            std::thread::spawn(move || {
                for i in 0..250 {
                    landed(f.commit("f", dir(&format!("par/{n}/{i}")), 0).unwrap());
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    eprintln!(
        "4 servers, one folder, one at a time: {:.0} commits/s",
        rate(1000, t)
    );
}

// ---------------------------------------------------------------------------------------------
// The object store's chunk index (feature `s3`): the in-memory one and PostgreSQL's.

#[cfg(feature = "s3")]
mod chunk_index {
    use super::*;
    use lbsync_objstore::{MemIndex, contract};

    #[test]
    fn mem() {
        contract::index(&MemIndex::new());
    }

    #[test]
    fn pg() {
        let Some(db) = PgDb::create("meta::chunk_index::pg") else {
            return;
        };
        contract::index(&*PgMeta::connect(&db.url).unwrap().chunk_index());
    }
}
