use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::manifest::{ChunkRef, Manifest};
use crate::mem::MemStore;

fn small_packs() -> StoreOptions {
    StoreOptions {
        pack_target: 64 << 10,
        cache_capacity: 8 << 20,
        ..StoreOptions::default()
    }
}

/// Chunk number `i`: random or compressible bytes of varying length, always the same for one `i`.
fn chunk(i: u32) -> Chunk {
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(i));
    let len = rng.random_range(1..6000);
    let mut data = vec![0u8; len];
    if i.is_multiple_of(3) {
        data.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = b"lbsync "[j % 7]);
        data[0] = i as u8;
        data[len / 2] = (i >> 8) as u8;
    } else {
        rng.fill_bytes(&mut data);
    }
    Chunk::new(data)
}

fn manifest_of(ids: &[u32]) -> Manifest {
    Manifest::new(
        ids.iter()
            .map(|&i| {
                let c = chunk(i);
                ChunkRef {
                    id: c.id(),
                    len: c.len() as u32,
                }
            })
            .collect(),
    )
}

fn no_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        repack_below: 0.5,
        dry_run: false,
    }
}

fn last_pack(dir: &Path) -> PathBuf {
    let packs = list_packs(&dir.join("packs")).unwrap();
    pack_path(&dir.join("packs"), *packs.last().unwrap())
}

#[test]
fn insert_get_reopen_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..100).map(chunk).collect();
    {
        let store = PackStore::open_with(dir.path(), &small_packs()).unwrap();
        assert!(store.recovery().created);
        let outcome = store.insert_batch(&chunks).unwrap();
        assert!(outcome.iter().all(|o| *o == Inserted::New));
        assert_eq!(store.insert(&chunks[5]).unwrap(), Inserted::AlreadyPresent);
        let twice = [chunk(200), chunk(200)];
        assert_eq!(
            store.insert_batch(&twice).unwrap(),
            [Inserted::New, Inserted::AlreadyPresent]
        );
    }
    let store = PackStore::open_with(dir.path(), &small_packs()).unwrap();
    assert_eq!(store.recovery(), &RecoveryReport::default());
    for c in &chunks {
        assert_eq!(store.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
    let absent = chunk(999).id();
    assert_eq!(store.get(&absent).unwrap(), None);
    let ask = [chunks[1].id(), absent, chunks[2].id(), absent];
    assert_eq!(store.missing(&ask).unwrap(), [absent]);
    let stats = store.stats().unwrap();
    assert_eq!(stats.chunks, 101);
    assert!(stats.packs > 1, "64 KiB packs roll: {stats:?}");
    assert!(
        stats.stored_bytes < stats.raw_bytes,
        "a third of the chunks compress"
    );
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn existing_store_keeps_its_params() {
    let dir = tempfile::tempdir().unwrap();
    drop(PackStore::open(dir.path()).unwrap());
    let opts = StoreOptions {
        params: ChunkParams::AVG_64K,
        ..StoreOptions::default()
    };
    let store = PackStore::open_with(dir.path(), &opts).unwrap();
    assert_eq!(store.params(), ChunkParams::DEFAULT);
}

#[test]
fn second_open_of_a_store_in_use_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let _store = PackStore::open(dir.path()).unwrap();
    let impatient = StoreOptions {
        lock_wait: Duration::ZERO,
        ..StoreOptions::default()
    };
    // sled's lock is per process on some platforms; only check the message when it refuses.
    if let Err(e) = PackStore::open_with(dir.path(), &impatient) {
        assert!(matches!(e, crate::Error::Locked { .. }), "{e:?}");
        assert!(e.to_string().contains("in use by another process"), "{e}");
    }
}

#[test]
fn open_existing_creates_nothing_where_there_is_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let e = PackStore::open_existing(&missing).err().unwrap();
    assert!(matches!(e, crate::Error::NoStore { .. }), "{e:?}");
    assert!(e.to_string().contains("lbsync-server init"), "{e}");
    assert!(!missing.exists());
    let e = PackStore::open_read_only(dir.path()).err().unwrap();
    assert!(matches!(e, crate::Error::NoStore { .. }), "{e:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    drop(PackStore::open(&missing).unwrap());
    assert!(PackStore::exists(&missing));
    assert!(PackStore::open_existing(&missing).is_ok());
}

#[test]
fn torn_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..10).map(chunk).collect();
    {
        let store = PackStore::open(dir.path()).unwrap();
        store.insert_batch(&chunks).unwrap();
    }
    // Half a record: a crash in the middle of an append.
    let rec = Record::encode(&chunk(77));
    let pack = last_pack(dir.path());
    let before = fs::metadata(&pack).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&pack)
        .unwrap()
        .write_all(&rec.to_vec()[..rec.to_vec().len() / 2])
        .unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().truncated.len(), 1);
    assert_eq!(fs::metadata(&pack).unwrap().len(), before);
    assert!(store.fsck(false).unwrap().is_clean());
    for c in &chunks {
        assert_eq!(store.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
    assert_eq!(store.get(&chunk(77).id()).unwrap(), None);
}

#[test]
fn records_past_the_watermark_are_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..20).map(chunk).collect();
    {
        let store = PackStore::open(dir.path()).unwrap();
        store.insert_batch(&chunks[..10]).unwrap();
    }
    // Records appended and synced, but the index update lost: as after a kill -9 before sled's
    // flush.
    let pack = last_pack(dir.path());
    let mut tail = Vec::new();
    for c in &chunks[10..] {
        tail.extend_from_slice(&Record::encode(c).to_vec());
    }
    OpenOptions::new()
        .append(true)
        .open(&pack)
        .unwrap()
        .write_all(&tail)
        .unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().reindexed, 10);
    for c in &chunks {
        assert_eq!(store.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
    // An append after recovery lands after the recovered records.
    store.insert(&chunk(500)).unwrap();
    assert!(store.fsck(false).unwrap().is_clean());
}

/// Flips a bit of the payload of `id`'s record (stored raw, so the flip lands in its bytes).
fn damage_payload(store: &PackStore, dir: &Path, id: &ChunkId) -> IndexEntry {
    let entry = store.entry(id).unwrap().unwrap();
    let pack = pack_path(&dir.join("packs"), entry.pack);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let at = entry.offset + RECORD_HEADER_LEN as u64 + 10;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    entry
}

#[test]
fn a_damaged_chunk_is_reported_corrupt_then_missing_and_heals_on_upload() {
    let dir = tempfile::tempdir().unwrap();
    let victim = chunk(1); // random bytes: stored raw
    let other = chunk(2);
    let store = PackStore::open(dir.path()).unwrap();
    store
        .insert_batch(&[victim.clone(), other.clone()])
        .unwrap();
    let entry = damage_payload(&store, dir.path(), &victim.id());

    let report = store.fsck(false).unwrap();
    assert_eq!(report.lost, [victim.id()], "fsck without repair reports it");
    assert!(report.problems.iter().any(
        |p| matches!(p, FsckProblem::DamagedRecord { id: Some(id), .. } if *id == victim.id())
    ));
    assert!(
        store.missing(&[victim.id()]).unwrap().is_empty(),
        "fsck alone marks nothing"
    );

    match store.get(&victim.id()) {
        Err(Error::Corrupt {
            id, pack, offset, ..
        }) => {
            assert_eq!((id, pack, offset), (victim.id(), entry.pack, entry.offset));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.get(&other.id()).unwrap().as_ref(), Some(other.data()));
    // The read marked it: missing, absent, and a new upload stores a sound copy.
    assert_eq!(
        store.missing(&[victim.id(), other.id()]).unwrap(),
        [victim.id()]
    );
    assert!(!store.contains(&victim.id()).unwrap());
    assert_eq!(store.get(&victim.id()).unwrap(), None);
    assert_eq!(store.insert(&victim).unwrap(), Inserted::New);
    assert_eq!(
        store.get(&victim.id()).unwrap().as_ref(),
        Some(victim.data())
    );
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get(&victim.id()).unwrap().as_ref(),
        Some(victim.data()),
        "the fresh copy survives a reopen"
    );
    let after = store.fsck(false).unwrap();
    // The damaged record is still in the pack, but nothing points at it any more.
    assert!(after.lost.is_empty());
    assert!(
        after
            .problems
            .iter()
            .all(|p| matches!(p, FsckProblem::DamagedRecord { .. }))
    );
}

#[test]
fn fsck_repair_marks_damaged_chunks_missing() {
    let dir = tempfile::tempdir().unwrap();
    let victim = chunk(1);
    let store = PackStore::open(dir.path()).unwrap();
    store.insert_batch(&[victim.clone(), chunk(2)]).unwrap();
    damage_payload(&store, dir.path(), &victim.id());
    let repaired = store.fsck(true).unwrap();
    assert!(repaired.repaired);
    assert_eq!(repaired.lost, [victim.id()]);
    assert_eq!(store.missing(&[victim.id()]).unwrap(), [victim.id()]);
    assert_eq!(store.get(&victim.id()).unwrap(), None);
}

/// Appends, behind the store's back (as records written but never indexed before a crash), the
/// records of `chunks`, then returns the offsets they landed at.
fn append_unindexed(dir: &Path, chunks: &[Chunk]) -> Vec<u64> {
    let pack = last_pack(dir);
    let mut at = fs::metadata(&pack).unwrap().len();
    let mut file = OpenOptions::new().append(true).open(&pack).unwrap();
    let mut offsets = Vec::new();
    for c in chunks {
        let rec = Record::encode(c).to_vec();
        offsets.push(at);
        file.write_all(&rec).unwrap();
        at += rec.len() as u64;
    }
    offsets
}

fn flip(dir: &Path, at: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(last_pack(dir))
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

/// Every file under `dir` and its BLAKE3, to tell whether anything changed.
fn hashes(dir: &Path) -> Vec<(PathBuf, blake3::Hash)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let h = blake3::hash(&fs::read(&p).unwrap());
            (p, h)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn damage_in_the_middle_of_a_pack_loses_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..12).map(chunk).collect();
    {
        let store = PackStore::open(dir.path()).unwrap();
        store.insert(&chunk(100)).unwrap();
    }
    // Acknowledged records whose index updates were lost, as after a kill -9 before sled's
    // flush; then two of them are damaged on disk: a payload (chunk 4, random bytes stored raw)
    // and a header (chunk 7).
    let at = append_unindexed(dir.path(), &chunks);
    flip(dir.path(), at[4] + RECORD_HEADER_LEN as u64 + 5);
    flip(dir.path(), at[7] + 20);
    let pack_len = fs::metadata(last_pack(dir.path())).unwrap().len();

    let store = PackStore::open(dir.path()).unwrap();
    let r = store.recovery();
    assert!(r.truncated.is_empty(), "{r:?}");
    assert_eq!(
        r.skipped.iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
        [(at[4], at[5] - at[4]), (at[7], at[8] - at[7])]
    );
    assert_eq!(r.reindexed, 10);
    assert_eq!(r.salvaged, 6, "5, 6 and 8 to 11");
    assert_eq!(fs::metadata(last_pack(dir.path())).unwrap().len(), pack_len);
    for (i, c) in chunks.iter().enumerate() {
        let got = store.get(&c.id()).unwrap();
        if i == 4 || i == 7 {
            assert_eq!(got, None, "chunk {i} is missing, not wrong");
        } else {
            assert_eq!(got.as_ref(), Some(c.data()), "chunk {i}");
        }
    }
    let ids: Vec<ChunkId> = chunks.iter().map(Chunk::id).collect();
    assert_eq!(store.missing(&ids).unwrap(), [ids[4], ids[7]]);
    // Clients upload them again; appends land after the salvaged records.
    store
        .insert_batch(&[chunks[4].clone(), chunks[7].clone()])
        .unwrap();
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(
        store.recovery().skipped,
        [],
        "a scan starts at the watermark"
    );
    for c in &chunks {
        assert_eq!(store.get(&c.id()).unwrap().as_ref(), Some(c.data()));
    }
}

#[test]
fn read_only_opens_change_no_pack_and_a_writable_open_cuts_the_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..6).map(chunk).collect();
    let m = {
        let store = PackStore::open(dir.path()).unwrap();
        store.insert(&chunk(100)).unwrap();
        store.put_manifest(&manifest_of(&[100])).unwrap()
    };
    // Unindexed records past the watermark, one damaged, and a torn tail.
    let at = append_unindexed(dir.path(), &chunks);
    flip(dir.path(), at[2] + RECORD_HEADER_LEN as u64 + 5);
    let torn = Record::encode(&chunk(77)).to_vec();
    OpenOptions::new()
        .append(true)
        .open(last_pack(dir.path()))
        .unwrap()
        .write_all(&torn[..torn.len() / 2])
        .unwrap();
    let before = hashes(&dir.path().join("packs"));

    for _ in 0..2 {
        let store = PackStore::open_read_only(dir.path()).unwrap();
        assert!(store.is_read_only());
        let r = store.recovery();
        assert!(r.truncated.is_empty(), "{r:?}");
        assert_eq!(r.torn_left.len(), 1, "{r:?}");
        assert_eq!(r.skipped.len(), 1, "{r:?}");
        for (i, c) in chunks.iter().enumerate() {
            let got = store.get(&c.id()).unwrap();
            assert_eq!(got.is_some(), i != 2, "chunk {i}");
        }
        assert_eq!(store.stats().unwrap().chunks, 2 + 5);
        let report = store.fsck(false).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| matches!(p, FsckProblem::TornTail { .. })),
            "{report:?}"
        );
        let dry = GcOptions {
            dry_run: true,
            ..no_grace()
        };
        assert_eq!(
            store.gc(&mut [m].into_iter(), &dry).unwrap().swept_chunks,
            5
        );
        let refused = [
            store.insert(&chunk(200)).map(|_| ()),
            store.fsck(true).map(|_| ()),
            store.gc(&mut [m].into_iter(), &no_grace()).map(|_| ()),
        ];
        for r in refused {
            assert!(matches!(r, Err(Error::ReadOnly { .. })), "{r:?}");
        }
        drop(store);
        assert_eq!(hashes(&dir.path().join("packs")), before, "no pack changed");
    }
    assert!(PackStore::open_read_only(dir.path().join("nothing")).is_err());
    assert!(!dir.path().join("nothing").exists());

    let store = PackStore::open(dir.path()).unwrap();
    let r = store.recovery();
    assert_eq!(r.truncated.len(), 1, "{r:?}");
    assert_eq!(r.truncated[0].2, (torn.len() / 2) as u64);
    assert_eq!(r.skipped.len(), 1);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(store.get(&c.id()).unwrap().is_some(), i != 2, "chunk {i}");
    }
}

#[test]
fn damaged_header_is_skipped_by_fsck_and_later_records_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..5).map(chunk).collect();
    let store = PackStore::open(dir.path()).unwrap();
    store.insert_batch(&chunks).unwrap();
    let entry = store.entry(&chunks[2].id()).unwrap().unwrap();
    let pack = pack_path(&dir.path().join("packs"), entry.pack);
    let file = OpenOptions::new().write(true).open(&pack).unwrap();
    file.write_all_at(b"XXXX", entry.offset).unwrap();
    let report = store.fsck(true).unwrap();
    assert_eq!(report.lost, [chunks[2].id()]);
    for (i, c) in chunks.iter().enumerate() {
        let got = store.get(&c.id()).unwrap();
        assert_eq!(got.is_some(), i != 2, "chunk {i}");
    }
}

#[test]
fn gc_sweeps_unreachable_and_repacks() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open_with(dir.path(), &small_packs()).unwrap();
    let keep: Vec<u32> = (0..40).collect();
    let drop_: Vec<u32> = (40..120).collect();
    let all: Vec<Chunk> = (0..120).map(chunk).collect();
    store.insert_batch(&all).unwrap();
    let m_keep = store.put_manifest(&manifest_of(&keep)).unwrap();
    store.put_manifest(&manifest_of(&drop_)).unwrap();
    let disk_before = store.stats().unwrap().disk_bytes;

    // The grace period protects everything just inserted.
    let graced = store
        .gc(&mut [m_keep].into_iter(), &GcOptions::default())
        .unwrap();
    assert_eq!(graced.swept_chunks, 0);
    assert_eq!(graced.kept_in_grace, 81);

    let dry = store
        .gc(
            &mut [m_keep].into_iter(),
            &GcOptions {
                dry_run: true,
                ..no_grace()
            },
        )
        .unwrap();
    assert_eq!(dry.swept_chunks, 81);
    assert_eq!(
        store.stats().unwrap().chunks,
        122,
        "a dry run changes nothing"
    );

    let report = store.gc(&mut [m_keep].into_iter(), &no_grace()).unwrap();
    assert_eq!(report.live_chunks, 41);
    assert_eq!(report.swept_chunks, 81);
    assert!(
        report.packs_deleted > 0 && report.packs_rewritten > 0,
        "{report:?}"
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.chunks, 41);
    // What is left: the live records, plus at most the pack being appended to, never rewritten.
    let live_on_disk = stats.stored_bytes + stats.chunks * RECORD_HEADER_LEN as u64;
    let bound = live_on_disk + stats.packs * PACK_HEADER_LEN + small_packs().pack_target;
    assert!(
        stats.disk_bytes < disk_before && stats.disk_bytes <= bound,
        "{stats:?} vs {disk_before}"
    );
    for &i in &keep {
        assert_eq!(
            store.get(&chunk(i).id()).unwrap().as_ref(),
            Some(chunk(i).data())
        );
    }
    assert_eq!(store.get(&chunk(50).id()).unwrap(), None);
    assert!(store.fsck(false).unwrap().is_clean());
    drop(store);
    let store = PackStore::open_with(dir.path(), &small_packs()).unwrap();
    assert_eq!(store.recovery().reindexed, 0, "swept chunks stay swept");
    assert_eq!(store.stats().unwrap().chunks, 41);
}

#[test]
fn gc_with_unknown_live_manifest_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    store.insert(&chunk(1)).unwrap();
    let unknown = manifest_of(&[9]).id();
    let err = store
        .gc(&mut [unknown].into_iter(), &no_grace())
        .unwrap_err();
    assert!(matches!(err, Error::MissingManifest(id) if id == unknown));
    assert!(store.contains(&chunk(1).id()).unwrap());
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u32>),
    Get(u32),
    PutManifest(Vec<u32>),
    /// Keep the manifests whose positions (modulo how many exist) are listed.
    Gc(Vec<usize>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u32..60, 1..8).prop_map(Op::Insert),
        3 => (0u32..60).prop_map(Op::Get),
        2 => proptest::collection::vec(0u32..60, 0..6).prop_map(Op::PutManifest),
        1 => proptest::collection::vec(0usize..8, 0..3).prop_map(Op::Gc),
        1 => Just(Op::Reopen),
    ]
}

/// Runs `ops` against a store and a `HashMap` model; `reopen` drops and reopens the store.
fn check_against_model<S: ChunkStore>(ops: &[Op], mut store: S, mut reopen: impl FnMut(S) -> S) {
    let mut model: HashMap<ChunkId, Bytes> = HashMap::new();
    let mut manifests: Vec<(ManifestId, Manifest)> = Vec::new();
    for op in ops {
        match op {
            Op::Insert(ids) => {
                let chunks: Vec<Chunk> = ids.iter().map(|&i| chunk(i)).collect();
                let outcome = store.insert_batch(&chunks).unwrap();
                let mut seen = HashSet::new();
                for (c, o) in chunks.iter().zip(outcome) {
                    let expect = if model.contains_key(&c.id()) || !seen.insert(c.id()) {
                        Inserted::AlreadyPresent
                    } else {
                        Inserted::New
                    };
                    assert_eq!(o, expect, "{c:?}");
                }
                for c in chunks {
                    model.insert(c.id(), c.data().clone());
                }
            }
            Op::Get(i) => {
                let id = chunk(*i).id();
                assert_eq!(store.get(&id).unwrap(), model.get(&id).cloned());
                assert_eq!(store.contains(&id).unwrap(), model.contains_key(&id));
            }
            Op::PutManifest(ids) => {
                let m = manifest_of(ids);
                let mid = store.put_manifest(&m).unwrap();
                model.insert(mid.as_chunk_id(), m.encode().into());
                manifests.push((mid, m));
            }
            Op::Gc(picks) => {
                manifests.retain(|(mid, _)| model.contains_key(&mid.as_chunk_id()));
                if manifests.is_empty() {
                    continue;
                }
                let live: Vec<&(ManifestId, Manifest)> = picks
                    .iter()
                    .map(|p| &manifests[p % manifests.len()])
                    .collect();
                let mut reachable: HashSet<ChunkId> = HashSet::new();
                for (mid, m) in &live {
                    reachable.insert(mid.as_chunk_id());
                    reachable.extend(m.chunks().iter().map(|c| c.id));
                }
                store
                    .gc(&mut live.iter().map(|(mid, _)| *mid), &no_grace())
                    .unwrap();
                model.retain(|id, _| reachable.contains(id));
            }
            Op::Reopen => store = reopen(store),
        }
    }
    for (id, bytes) in &model {
        assert_eq!(store.get(id).unwrap().as_ref(), Some(bytes));
    }
    assert_eq!(store.stats().unwrap().chunks, model.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn pack_store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let open = || PackStore::open_with(dir.path(), &small_packs()).unwrap();
        check_against_model(&ops, open(), |s| { drop(s); open() });
        let store = open();
        let report = store.fsck(false).unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
    }

    #[test]
    fn mem_store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        check_against_model(&ops, MemStore::default(), |s| s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the live set and however small the exact part of the mark (so that it goes to
    /// the Bloom filter), gc deletes no chunk a live manifest references, nor a live manifest;
    /// what it keeps reads back, the store checks clean, and with an exact mark every
    /// unreferenced chunk goes.
    #[test]
    fn gc_never_deletes_a_referenced_chunk(
        stored in proptest::collection::vec(0u32..300, 1..120),
        manifests in proptest::collection::vec(proptest::collection::vec(0u32..300, 0..12), 1..12),
        live in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        exact_max in prop_oneof![Just(1usize), Just(5), Just(40), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = PackStore::open_with(dir.path(), &small_packs()).unwrap();
        let chunks: Vec<Chunk> = stored.iter().map(|&i| chunk(i)).collect();
        store.insert_batch(&chunks).unwrap();
        let mut mids = Vec::new();
        for ids in &manifests {
            // A manifest references only stored chunks (as a commit checks).
            let ids: Vec<u32> = ids.iter().copied().filter(|i| stored.contains(i)).collect();
            mids.push((store.put_manifest(&manifest_of(&ids)).unwrap(), ids));
        }
        let live: Vec<&(ManifestId, Vec<u32>)> = live.iter().map(|i| i.get(&mids)).collect();
        let mut reachable: HashSet<ChunkId> = HashSet::new();
        for (mid, ids) in &live {
            reachable.insert(mid.as_chunk_id());
            reachable.extend(ids.iter().map(|&i| chunk(i).id()));
        }
        let report = super::gc::run_with(
            &store,
            &mut live.iter().map(|(mid, _)| *mid),
            &no_grace(),
            exact_max,
        )
        .unwrap();
        for id in &reachable {
            prop_assert!(store.contains(id).unwrap(), "live {id} reported missing");
            prop_assert!(store.get(id).unwrap().is_some(), "live {id} deleted");
        }
        for (mid, _) in &live {
            prop_assert!(store.get_manifest(mid).unwrap().is_some());
        }
        let left = store.stats().unwrap().chunks;
        prop_assert!(left >= reachable.len() as u64);
        if exact_max > 1000 {
            prop_assert_eq!(left, reachable.len() as u64, "{:?}", report);
        }
        // Whatever is left is consistent: contains agrees with get, and fsck finds nothing.
        for &i in &stored {
            let id = chunk(i).id();
            prop_assert_eq!(store.contains(&id).unwrap(), store.get(&id).unwrap().is_some());
        }
        let fsck = store.fsck(false).unwrap();
        prop_assert!(fsck.is_clean(), "{:?}", fsck.problems);
        drop(store);
        let store = PackStore::open_with(dir.path(), &small_packs()).unwrap();
        for id in &reachable {
            prop_assert!(store.get(id).unwrap().is_some(), "live {id} lost at reopen");
        }
    }
}

/// Every chunk stored is present (contains, missing, and not stored twice) at once, after a
/// reopen, after gc kept it and after fsck --repair rebuilt the filter; a chunk swept or never
/// stored is missing. Past the filter's first layer, through the store.
#[test]
fn a_stored_chunk_is_never_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    let open = || PackStore::open_with(dir.path(), &small_packs()).unwrap();
    let store = open();
    let ids: Vec<ChunkId> = (0..400).map(|i| chunk(i).id()).collect();
    let check = |store: &PackStore, upto: usize| {
        assert_eq!(store.missing(&ids[..upto]).unwrap(), Vec::<ChunkId>::new());
        assert!(ids[..upto].iter().all(|id| store.contains(id).unwrap()));
        assert_eq!(store.missing(&ids[upto..]).unwrap(), ids[upto..].to_vec());
    };
    for k in 0..4 {
        let batch: Vec<Chunk> = (k * 50..(k + 1) * 50).map(chunk).collect();
        assert!(
            store
                .insert_batch(&batch)
                .unwrap()
                .iter()
                .all(|o| *o == Inserted::New)
        );
        check(&store, (k as usize + 1) * 50);
        assert!(
            store
                .insert_batch(&batch)
                .unwrap()
                .iter()
                .all(|o| *o == Inserted::AlreadyPresent)
        );
    }
    drop(store);
    let store = open();
    check(&store, 200);
    let m = manifest_of(&(0..100).collect::<Vec<_>>());
    let mid = store.put_manifest(&m).unwrap();
    store.gc(&mut [mid].into_iter(), &no_grace()).unwrap();
    check(&store, 100);
    drop(store);
    let store = open();
    check(&store, 100);
    // A repair indexes again the swept records still on disk (the next gc sweeps them again):
    // what it says is present reads back.
    assert!(store.fsck(true).unwrap().is_clean());
    assert_eq!(store.missing(&ids[..100]).unwrap(), Vec::<ChunkId>::new());
    assert_eq!(store.missing(&ids[200..]).unwrap(), ids[200..].to_vec());
    for id in &ids[100..200] {
        assert_eq!(
            store.contains(id).unwrap(),
            store.get(id).unwrap().is_some()
        );
    }
}

#[test]
fn chunks_of_a_file_store_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let mut data = vec![0u8; 3 << 20];
    ChaCha8Rng::seed_from_u64(3).fill_bytes(&mut data);
    let mut refs = Vec::new();
    let mut batch = Vec::new();
    crate::chunk_pipelined::<_, Error>(&data[..], store.params(), |_, c| {
        refs.push(ChunkRef {
            id: c.id(),
            len: c.len() as u32,
        });
        batch.push(c);
        Ok(())
    })
    .unwrap();
    store.insert_batch(&batch).unwrap();
    let m = Manifest::new(refs);
    let mid = store.put_manifest(&m).unwrap();
    let back = store.get_manifest(&mid).unwrap().unwrap();
    let mut rebuilt = Vec::with_capacity(data.len());
    for c in back.chunks() {
        rebuilt.extend_from_slice(&store.get(&c.id).unwrap().unwrap());
    }
    assert_eq!(rebuilt, data);
}

/// The manifest of a multi-GB file is one record far over the chunk size limit: it must store,
/// survive a reopen (the recovery scan parses its header) and read back.
#[test]
fn manifests_over_the_chunk_limit_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<ChunkRef> = (0..100_000u32)
        .map(|i| ChunkRef {
            id: ChunkId::of(&i.to_le_bytes()),
            len: 8192,
        })
        .collect();
    let m = Manifest::new(refs);
    assert!(m.encode().len() > crate::MAX_CHUNK_LIMIT as usize * 3);
    {
        let store = PackStore::open(dir.path()).unwrap();
        assert_eq!(store.put_manifest(&m).unwrap(), m.id());
    }
    // Lose the index so that the reopen re-parses the record from the pack.
    std::fs::remove_dir_all(dir.path().join("index")).ok();
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(store.get_manifest(&m.id()).unwrap(), Some(m));
}

/// Entries are written to sled behind the packs: readable at once, in sled once settled, and a
/// clean close leaves nothing for the next open to re-index.
#[test]
fn index_entries_reach_sled_behind_the_packs() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Chunk> = (0..300).map(chunk).collect();
    {
        let store = PackStore::open(dir.path()).unwrap();
        for batch in chunks.chunks(50) {
            store.insert_batch(batch).unwrap();
            for c in batch {
                assert_eq!(store.get(&c.id()).unwrap().as_ref(), Some(c.data()));
            }
        }
        store.flush().unwrap();
        for c in &chunks {
            assert!(store.inner.index.contains_key(c.id().as_bytes()).unwrap());
        }
        assert_eq!(
            store.inner.indexer.get(&chunks[0].id()),
            None,
            "none left pending"
        );
        store.insert_batch(&[chunk(1000)]).unwrap();
    }
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(
        store.recovery().reindexed,
        0,
        "the close wrote what was pending"
    );
    assert_eq!(store.stats().unwrap().chunks, 301);
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn each_store_has_its_own_id_and_keeps_it() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id_a = PackStore::open(a.path()).unwrap().store_id().to_owned();
    let id_b = PackStore::open(b.path()).unwrap().store_id().to_owned();
    for id in [&id_a, &id_b] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{id}"
        );
    }
    assert_ne!(id_a, id_b);
    assert_eq!(PackStore::open(a.path()).unwrap().store_id(), id_a);
}

#[test]
fn a_store_made_before_ids_gets_one_at_its_first_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = PackStore::open(dir.path()).unwrap();
        let meta = store.db().open_tree("meta").unwrap();
        meta.remove(STORE_ID_KEY).unwrap();
        store.db().flush().unwrap();
    }
    let first = PackStore::open(dir.path()).unwrap().store_id().to_owned();
    assert_eq!(first.len(), 32);
    assert_eq!(PackStore::open(dir.path()).unwrap().store_id(), first);
}
