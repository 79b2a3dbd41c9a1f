use std::sync::Arc;
use std::time::Duration;

use lbsync_chunkstore::contract::{self, noise_chunk};
use lbsync_chunkstore::{
    Chunk, ChunkParams, ChunkStore, Error as ChunkError, GcOptions, Inserted, Manifest,
};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::*;
use crate::index::{IndexStats, MemIndex};

/// A store in memory whose collections may use any grace period (tests collect with none).
fn new_store(opts: StoreOptions) -> (ObjectChunkStore, Arc<dyn ObjectStore>, Arc<MemIndex>) {
    let opts = StoreOptions {
        min_grace: Duration::ZERO,
        ..opts
    };
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let index = Arc::new(MemIndex::new());
    let store = ObjectChunkStore::create(
        objects.clone(),
        Path::from("t"),
        index.clone(),
        ChunkParams::DEFAULT,
        opts,
    )
    .unwrap();
    (store, objects, index)
}

fn no_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    }
}

#[test]
fn the_object_store_keeps_the_chunk_store_contract() {
    let (store, _, _) = new_store(StoreOptions::default());
    contract::run(&store, "objstore").unwrap();
    // Again with tiny packs, so that batches span several packs, and no cache.
    let (store, _, _) = new_store(StoreOptions {
        pack_target: 4096,
        cache_bytes: 0,
        ..StoreOptions::default()
    });
    contract::run(&store, "objstore-small").unwrap();
}

#[test]
fn create_refuses_an_existing_store_and_open_finds_it() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let index: Arc<dyn ChunkIndex> = Arc::new(MemIndex::new());
    let prefix = Path::from("a/b");
    let err = ObjectChunkStore::open(
        objects.clone(),
        prefix.clone(),
        index.clone(),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoStore { .. }), "{err}");
    assert!(err.to_string().contains("no store at"), "{err}");

    let params = ChunkParams::AVG_16K;
    let made = ObjectChunkStore::create(
        objects.clone(),
        prefix.clone(),
        index.clone(),
        params,
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(made.store_id().len(), 32);
    let err = ObjectChunkStore::create(
        objects.clone(),
        prefix.clone(),
        index.clone(),
        ChunkParams::DEFAULT,
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");

    let opened = ObjectChunkStore::open(
        objects.clone(),
        prefix.clone(),
        index.clone(),
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(opened.store_id(), made.store_id());
    assert_eq!(opened.params(), params, "the store's params, not a default");

    // Another prefix is another store.
    let other = ObjectChunkStore::create(
        objects.clone(),
        Path::from("a/c"),
        index,
        params,
        StoreOptions::default(),
    )
    .unwrap();
    assert_ne!(other.store_id(), made.store_id());

    // A damaged config is refused with the reason.
    let config = Path::from("a/b/config");
    let _ = futures::executor::block_on(objects.put(&config, b"{}".to_vec().into())).unwrap();
    let err = ObjectChunkStore::open(
        objects,
        prefix,
        Arc::new(MemIndex::new()),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not the JSON"), "{err}");
}

#[test]
fn open_url_creates_once_then_opens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", dir.path().display());
    let index: Arc<dyn ChunkIndex> = Arc::new(MemIndex::new());
    let err =
        ObjectChunkStore::open_url(&url, index.clone(), None, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
    let made = ObjectChunkStore::open_url(
        &url,
        index.clone(),
        Some(ChunkParams::DEFAULT),
        StoreOptions::default(),
    )
    .unwrap();
    let chunk = noise_chunk("url", 1, 10_000);
    assert_eq!(made.insert(&chunk).unwrap(), Inserted::New);
    assert!(dir.path().join("store/config").is_file());
    let again = ObjectChunkStore::open_url(
        &url,
        index,
        Some(ChunkParams::AVG_64K),
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(again.store_id(), made.store_id());
    assert_eq!(again.params(), ChunkParams::DEFAULT);
    assert_eq!(again.get(&chunk.id()).unwrap().as_ref(), Some(chunk.data()));
    assert_eq!(made.url(), url);
}

/// Flips one byte of the object holding `chunk`, inside its payload.
fn damage(objects: &Arc<dyn ObjectStore>, index: &MemIndex, chunk: &Chunk) {
    let loc = index.lookup(&[chunk.id()]).unwrap()[0].unwrap();
    let path = pack_path(&Path::from("t"), &loc.pack);
    let mut bytes = futures::executor::block_on(async {
        objects.get(&path).await.unwrap().bytes().await.unwrap()
    })
    .to_vec();
    bytes[loc.offset as usize + 56 + 7] ^= 0x20;
    futures::executor::block_on(objects.put(&path, bytes.into())).unwrap();
}

#[test]
fn a_flipped_byte_is_corrupt_never_wrong_bytes_and_the_chunk_can_be_stored_again() {
    let (store, objects, index) = new_store(StoreOptions {
        cache_bytes: 0,
        ..StoreOptions::default()
    });
    let hit = noise_chunk("flip", 1, 9000);
    let fine = noise_chunk("flip", 2, 9000);
    store.insert_batch(&[hit.clone(), fine.clone()]).unwrap();
    damage(&objects, &index, &hit);

    let err = store.get(&hit.id()).unwrap_err();
    match &err {
        ChunkError::Corrupt { id, what, .. } => {
            assert_eq!(*id, hit.id());
            assert!(what.contains("packs/") && what.contains("hash"), "{what}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    // In a batch too, and the sound neighbour in the same GET still reads.
    assert_eq!(store.get(&fine.id()).unwrap().as_ref(), Some(fine.data()));
    // The index forgot it: missing says so, and the next upload stores a sound copy.
    assert_eq!(
        store.missing(&[hit.id(), fine.id()]).unwrap(),
        vec![hit.id()]
    );
    assert_eq!(store.insert(&hit).unwrap(), Inserted::New);
    assert_eq!(store.get(&hit.id()).unwrap().as_ref(), Some(hit.data()));
}

#[test]
fn a_damaged_chunk_fails_a_batched_read() {
    let (store, objects, index) = new_store(StoreOptions {
        cache_bytes: 0,
        ..StoreOptions::default()
    });
    let chunks: Vec<Chunk> = (0..5).map(|n| noise_chunk("batch-flip", n, 3000)).collect();
    store.insert_batch(&chunks).unwrap();
    damage(&objects, &index, &chunks[2]);
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id()).collect();
    let err = store.get_batch(&ids).unwrap_err();
    assert!(
        matches!(err, ChunkError::Corrupt { id, .. } if id == chunks[2].id()),
        "{err}"
    );
}

#[test]
fn batched_reads_span_packs_and_answer_in_order() {
    let (store, _, index) = new_store(StoreOptions {
        pack_target: 64 << 10,
        coalesce_gap: 0,
        ..StoreOptions::default()
    });
    let chunks: Vec<Chunk> = (0..100).map(|n| noise_chunk("spread", n, 3000)).collect();
    store.insert_batch(&chunks).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.packs >= 4, "capped packs: {stats:?}");
    let mut ids: Vec<ChunkId> = chunks.iter().map(|c| c.id()).collect();
    ids.reverse();
    ids.push(ids[3]);
    let absent = ChunkId::of(b"absent");
    ids.insert(10, absent);
    let got = store.get_batch(&ids).unwrap();
    for (id, bytes) in ids.iter().zip(&got) {
        match bytes {
            Some(b) => assert_eq!(ChunkId::of(b), *id),
            None => assert_eq!(*id, absent),
        }
    }
    // From the cache now: the index is not asked again.
    index
        .remove(&[(
            chunks[0].id(),
            index.lookup(&[chunks[0].id()]).unwrap()[0].unwrap().pack,
        )])
        .unwrap();
    assert_eq!(
        store.get(&chunks[0].id()).unwrap().as_ref(),
        Some(chunks[0].data())
    );
}

#[test]
fn gc_keeps_the_young_and_the_live_deletes_empty_packs_and_repacks_sparse_ones() {
    let (store, objects, _) = new_store(StoreOptions::default());
    // Pack 1: all dead. Pack 2: one live chunk among dead ones. Pack 3: live.
    let dead: Vec<Chunk> = (0..10).map(|n| noise_chunk("gc-dead", n, 5000)).collect();
    store.insert_batch(&dead).unwrap();
    let mut mixed: Vec<Chunk> = (0..9).map(|n| noise_chunk("gc-mixed", n, 5000)).collect();
    let survivor = noise_chunk("gc-survivor", 0, 5000);
    mixed.push(survivor.clone());
    store.insert_batch(&mixed).unwrap();
    let live: Vec<Chunk> = (0..4).map(|n| noise_chunk("gc-live", n, 5000)).collect();
    store.insert_batch(&live).unwrap();
    let refs = live
        .iter()
        .chain([&survivor])
        .map(|c| c.chunk_ref())
        .collect();
    let mid = store.put_manifest(&Manifest::new(refs)).unwrap();
    assert_eq!(
        store.stats().unwrap().packs,
        4,
        "three batches and the manifest"
    );

    // Young: nothing goes.
    let report = store
        .gc(&mut [mid].into_iter(), &GcOptions::default())
        .unwrap();
    assert_eq!((report.swept_chunks, report.kept_in_grace), (0, 19));
    assert_eq!((report.packs_deleted, report.packs_rewritten), (0, 0));
    assert_eq!(store.stats().unwrap().chunks, 25);

    let before = store.stats().unwrap();
    let report = store.gc(&mut [mid].into_iter(), &no_grace()).unwrap();
    assert_eq!(report.live_chunks, 6);
    assert_eq!(report.swept_chunks, 19);
    assert_eq!(report.swept_bytes, 19 * 5000);
    assert_eq!(report.packs_rewritten, 1, "{report:?}");
    assert_eq!(report.packs_deleted, 2, "{report:?}");
    let after = store.stats().unwrap();
    assert_eq!((after.chunks, after.packs), (6, 3), "{after:?}");
    assert!(
        before.disk_bytes - after.disk_bytes >= 18 * 5000,
        "{before:?} {after:?}"
    );
    assert!(report.bytes_reclaimed >= 18 * 5000, "{report:?}");
    for c in live.iter().chain([&survivor]) {
        assert_eq!(store.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
    for c in dead.iter().chain(&mixed[..9]) {
        assert_eq!(store.get(&c.id()).unwrap(), None);
    }
    // A fresh store on the same objects, its index rebuilt from the packs, finds the same.
    let index = Arc::new(MemIndex::new());
    let reopened =
        ObjectChunkStore::open(objects, Path::from("t"), index, StoreOptions::default()).unwrap();
    assert_eq!(
        reopened.missing(&[survivor.id()]).unwrap(),
        vec![survivor.id()]
    );
    assert_eq!(reopened.rebuild_index().unwrap(), 6);
    assert_eq!(
        reopened.get(&survivor.id()).unwrap().as_ref(),
        Some(survivor.data())
    );
    assert_eq!(
        reopened.get_manifest(&mid).unwrap().unwrap().chunks().len(),
        5
    );
}

#[test]
fn a_pack_not_yet_recorded_is_not_deleted_within_the_grace_period() {
    let (store, objects, _) = new_store(StoreOptions::default());
    // Another server's pack, PUT but not recorded yet.
    let builder = build_packs(
        vec![Record::encode(&noise_chunk("inflight", 0, 100))],
        1 << 20,
    )
    .unwrap()
    .pop()
    .unwrap();
    store
        .put_packs_unrecorded(std::slice::from_ref(&builder))
        .unwrap();
    let report = store
        .gc(
            &mut std::iter::empty(),
            &GcOptions {
                grace: Duration::from_secs(60),
                ..GcOptions::default()
            },
        )
        .unwrap();
    assert_eq!(report.packs_deleted, 0);
    let path = pack_path(&Path::from("t"), &builder.name);
    assert!(futures::executor::block_on(objects.head(&path)).is_ok());
    // Past the grace period it is garbage.
    let report = store.gc(&mut std::iter::empty(), &no_grace()).unwrap();
    assert_eq!(report.packs_deleted, 1);
}

#[test]
fn the_store_is_usable_from_spawn_blocking_threads_of_another_runtime() {
    let (store, _, _) = new_store(StoreOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async move {
        let tasks: Vec<_> = (0..8)
            .map(|n| {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let c = noise_chunk("blocking", n, 4000);
                    store.insert(&c).unwrap();
                    store.get(&c.id()).unwrap() == Some(c.data().clone())
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += u32::from(t.await.unwrap());
        }
        // The last handle dropped inside the runtime's async context.
        drop(store_in_async());
        ok
    });
    assert_eq!(got, 8);
}

fn store_in_async() -> ObjectChunkStore {
    new_store(StoreOptions::default()).0
}

#[test]
fn two_servers_storing_the_same_chunks_at_once_agree_and_gc_removes_the_losing_copies() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let index = Arc::new(MemIndex::new());
    let prefix = Path::from("shared");
    let one = ObjectChunkStore::create(
        objects.clone(),
        prefix.clone(),
        index.clone(),
        ChunkParams::DEFAULT,
        StoreOptions {
            min_grace: Duration::ZERO,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let two =
        ObjectChunkStore::open(objects, prefix, index.clone(), StoreOptions::default()).unwrap();
    let chunks: Vec<Chunk> = (0..50).map(|n| noise_chunk("race", n, 2000)).collect();
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for store in [&one, &two] {
            let (chunks, barrier) = (&chunks, &barrier);
            s.spawn(move || {
                barrier.wait();
                for batch in chunks.chunks(2) {
                    store.insert_batch(batch).unwrap();
                }
            });
        }
    });
    // Whichever copy the index kept, both servers read the same right bytes.
    for c in &chunks {
        assert_eq!(one.get(&c.id()).unwrap().as_ref(), Some(c.data()));
        assert_eq!(two.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
    assert_eq!(index.stats().unwrap().chunks, 50);
    let refs = chunks.iter().map(|c| c.chunk_ref()).collect();
    let mid = one.put_manifest(&Manifest::new(refs)).unwrap();
    let packs_before = one.stats().unwrap().packs;
    // Any pack holding a dead byte is rewritten.
    let opts = GcOptions {
        repack_below: 1.0,
        ..no_grace()
    };
    let report = two.gc(&mut [mid].into_iter(), &opts).unwrap();
    assert_eq!(report.swept_chunks, 0, "every chunk is live");
    let after = one.stats().unwrap();
    assert!(after.packs <= packs_before, "{after:?}");
    // Every pack left holds live records only: the losers' copies are gone or repacked.
    assert!(
        after.disk_bytes < after.stored_bytes + after.chunks * 56 + after.packs * 16 + 1,
        "{after:?}"
    );
    for c in &chunks {
        assert_eq!(one.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
}

#[test]
fn the_contract_holds_on_a_directory_too() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", dir.path().display());
    let store = ObjectChunkStore::open_url(
        &url,
        Arc::new(MemIndex::new()),
        Some(ChunkParams::DEFAULT),
        StoreOptions {
            pack_target: 64 << 10,
            min_grace: Duration::ZERO,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(store.stats().unwrap().packs, 0, "no packs directory yet");
    contract::run(&store, "file").unwrap();
}

/// An index that lets a commit land between a collection's scan and its sweep: the first
/// `sweep` call first runs `before_sweep` (which a test sets to a commit's presence check).
struct CommitDuringSweep {
    inner: MemIndex,
    before_sweep: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ChunkIndex for CommitDuringSweep {
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        self.inner.lookup(ids)
    }
    fn record(&self, entries: &[(ChunkId, Location)], now_ms: i64) -> Result<()> {
        self.inner.record(entries, now_ms)
    }
    fn remove(&self, entries: &[(ChunkId, PackName)]) -> Result<u64> {
        self.inner.remove(entries)
    }
    fn touch(&self, ids: &[ChunkId], now_ms: i64, older_than_ms: i64) -> Result<()> {
        self.inner.touch(ids, now_ms, older_than_ms)
    }
    fn sweep(&self, entries: &[(ChunkId, PackName)], before: i64) -> Result<Vec<ChunkId>> {
        let hook = self.before_sweep.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.sweep(entries, before)
    }
    fn relocate(&self, moves: &[(ChunkId, PackName, Location)]) -> Result<u64> {
        self.inner.relocate(moves)
    }
    fn scan(&self, f: &mut dyn FnMut(ChunkId, Location, i64) -> Result<()>) -> Result<()> {
        self.inner.scan(f)
    }
    fn stats(&self) -> Result<IndexStats> {
        self.inner.stats()
    }
}

#[test]
fn a_chunk_a_commit_references_while_a_collection_runs_is_never_swept() {
    let index = Arc::new(CommitDuringSweep {
        inner: MemIndex::new(),
        before_sweep: std::sync::Mutex::new(None),
    });
    let store = ObjectChunkStore::create(
        Arc::new(InMemory::new()),
        Path::from("t"),
        index.clone(),
        ChunkParams::DEFAULT,
        StoreOptions {
            min_grace: Duration::from_secs(60),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // Unreferenced for two hours: garbage to a collection with an hour's grace, until a commit
    // names it again (a file put back as it was).
    let old = noise_chunk("old", 1, 5000);
    let other = noise_chunk("other", 2, 5000);
    store.insert_batch(&[old.clone(), other.clone()]).unwrap();
    let two_hours_ago = now_ms() - 2 * 3600 * 1000;
    index
        .touch(&[old.id(), other.id()], two_hours_ago, i64::MAX)
        .unwrap();
    // The commit's check runs after the collection read the index and before it sweeps.
    let checker = store.clone();
    let (old_id, other_id) = (old.id(), other.id());
    *index.before_sweep.lock().unwrap() = Some(Box::new(move || {
        assert_eq!(checker.missing_and_keep(&[old_id]).unwrap(), vec![]);
    }));
    let hour = GcOptions {
        grace: Duration::from_secs(3600),
        ..GcOptions::default()
    };
    let report = store.gc(&mut std::iter::empty(), &hour).unwrap();
    assert_eq!(
        report.swept_chunks, 1,
        "only the chunk nobody named: {report:?}"
    );
    assert_eq!(store.get(&old_id).unwrap().as_ref(), Some(old.data()));
    assert_eq!(store.get(&other_id).unwrap(), None);
    // The same store refuses a grace period shorter than the minimum it was made with.
    let err = store
        .gc(
            &mut std::iter::empty(),
            &GcOptions {
                grace: Duration::from_secs(59),
                ..GcOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("minimum of 60s"), "{err}");
    // A dry run may look with any.
    store
        .gc(
            &mut std::iter::empty(),
            &GcOptions {
                grace: Duration::ZERO,
                dry_run: true,
                ..GcOptions::default()
            },
        )
        .unwrap();
}
