//! Garbage collection of a [`PackStore`]: mark, sweep the index, rewrite sparse packs.
//!
//! Crash safety, step by step: sweeping only removes index entries (a pack still holding the bytes
//! is harmless). A rewritten pack's live records are appended to the current pack and synced, the
//! index is pointed at the copies and flushed, and only then is the old pack deleted. A crash
//! between any two steps leaves every indexed chunk readable.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::BuildHasherDefault;

use super::index::{IndexEntry, watermark_key};
use super::present::{Filter, IdBitsHasher};
use super::{PackStore, list_packs, lock, pack_path, sync_dir, unix_now};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ManifestId};
use crate::pack::{PACK_HEADER_LEN, PackReader, RECORD_HEADER_LEN};
use crate::store::{ChunkStore, GcOptions, GcReport};

/// Live ids held exactly, at most; past that, in a Bloom filter (see [`Live`]).
pub(crate) const EXACT_LIVE: usize = 1 << 20;

/// Index entries removed in one sled batch of the sweep.
const SWEEP_BATCH: usize = 64 * 1024;

/// Bytes of records copied out of a sparse pack per append.
const COPY_BATCH: u64 = 8 << 20;

/// The mark: every id reachable from the live manifests. Exact (the first 16 bytes of each id, as
/// the presence filter keeps them) up to [`EXACT_LIVE`] ids, then a Bloom filter at ~0.05% false
/// positives, about 2–4 bytes a live chunk. A false positive keeps a dead chunk until a later
/// collection (the salt changes each run); a live chunk is never missed.
enum Live {
    Exact(HashSet<u128, BuildHasherDefault<IdBitsHasher>>),
    Filter { filter: Filter, count: u64 },
}

fn exact_key(id: &ChunkId) -> u128 {
    u128::from_le_bytes(id.as_bytes()[..16].try_into().expect("16 bytes"))
}

impl Live {
    fn contains(&self, id: &ChunkId) -> bool {
        match self {
            Live::Exact(set) => set.contains(&exact_key(id)),
            Live::Filter { filter, .. } => filter.may_contain(id),
        }
    }

    /// Live ids: exact, or those the filter found surely new (a little under the truth).
    fn len(&self) -> u64 {
        match self {
            Live::Exact(set) => set.len() as u64,
            Live::Filter { count, .. } => *count,
        }
    }
}

/// Marks every manifest of `live` and every chunk it references. A manifest the store lacks
/// stops the collection before anything is deleted. Exact while it can be: a manifest met twice
/// is read once. Past [`EXACT_LIVE`] ids it starts again into a filter with the manifests marked
/// so far (their ids, at most that many, are all it keeps of the exact phase), and from then on
/// reads every manifest it is given (a false positive must not skip one). Memory: the set or the
/// filter, and one manifest at a time.
fn mark(
    store: &PackStore,
    live: &mut dyn Iterator<Item = ManifestId>,
    exact_max: usize,
) -> Result<Live> {
    let manifest = |mid: ManifestId| -> Result<crate::manifest::Manifest> {
        store.get_manifest(&mid)?.ok_or(Error::MissingManifest(mid))
    };
    let mut exact = HashSet::default();
    let mut seen: Vec<ManifestId> = Vec::new();
    let mut overflow = false;
    for mid in &mut *live {
        if !exact.insert(exact_key(&mid.as_chunk_id())) {
            continue;
        }
        let m = manifest(mid)?;
        seen.push(mid);
        exact.extend(m.chunks().iter().map(|c| exact_key(&c.id)));
        if exact.len() >= exact_max {
            overflow = true;
            break;
        }
    }
    if !overflow {
        return Ok(Live::Exact(exact));
    }
    drop(exact);
    let mut filter = Filter::new(4 * exact_max as u64, 16);
    let mut count = 0u64;
    let mut add = |filter: &mut Filter, id: &ChunkId| {
        count += u64::from(filter.insert(id));
        if filter.full() {
            filter.grow();
        }
    };
    for mid in seen.into_iter().chain(live) {
        add(&mut filter, &mid.as_chunk_id());
        for c in manifest(mid)?.chunks() {
            add(&mut filter, &c.id);
        }
    }
    Ok(Live::Filter { filter, count })
}

pub(super) fn run(
    store: &PackStore,
    live: &mut dyn Iterator<Item = ManifestId>,
    opts: &GcOptions,
) -> Result<GcReport> {
    run_with(store, live, opts, EXACT_LIVE)
}

/// [`run`], the mark exact up to `exact_max` ids (tests use a small one to reach the filter).
pub(super) fn run_with(
    store: &PackStore,
    live: &mut dyn Iterator<Item = ManifestId>,
    opts: &GcOptions,
    exact_max: usize,
) -> Result<GcReport> {
    let marked = mark(store, live, exact_max)?;
    let inner = &store.inner;
    if inner.read_only && !opts.dry_run {
        return Err(store.read_only_error("collect garbage"));
    }
    let mut writer = lock(&inner.writer);
    inner.indexer.settle()?;
    let now = unix_now();
    let grace = opts.grace.as_secs();
    let mut report = GcReport {
        live_chunks: marked.len(),
        ..GcReport::default()
    };

    // Sweep, in batches; what it keeps is counted per pack, not held.
    let mut dead = Vec::new();
    // Per pack: bytes and entries kept.
    let mut kept: HashMap<u32, (u64, u64)> = HashMap::new();
    let sweep = |dead: &mut Vec<ChunkId>| -> Result<()> {
        if !opts.dry_run && !dead.is_empty() {
            let mut batch = sled::Batch::default();
            for id in dead.iter() {
                batch.remove(id.as_bytes());
            }
            inner.index.apply_batch(batch)?;
            inner.present.remove_all(dead.iter());
        }
        dead.clear();
        Ok(())
    };
    for kv in store.entries() {
        let (id, entry) = kv?;
        let keep = marked.contains(&id);
        if keep || now.saturating_sub(entry.inserted_at) < grace {
            report.kept_in_grace += u64::from(!keep);
            let k = kept.entry(entry.pack).or_default();
            k.0 += entry.record_len();
            k.1 += 1;
        } else {
            report.swept_chunks += 1;
            report.swept_bytes += u64::from(entry.raw_len);
            dead.push(id);
            if dead.len() >= SWEEP_BATCH {
                sweep(&mut dead)?;
            }
        }
    }
    sweep(&mut dead)?;
    if !opts.dry_run && report.swept_chunks > 0 {
        inner.db.flush()?;
    }

    // Rewrite or delete sparse packs: not the one being appended to, nor the ones this loop
    // appends to after rolling (their copies are not in `kept`).
    let packs = list_packs(&inner.packs_dir)?;
    let first_unswept = match writer.as_ref() {
        Some(w) => w.pack,
        // Read-only (a dry run): the last pack is the one appends would go to.
        None => packs.last().copied().unwrap_or(0),
    };
    for pack in packs {
        if pack >= first_unswept {
            continue;
        }
        let path = pack_path(&inner.packs_dir, pack);
        let size = fs::metadata(&path)
            .map_err(Error::io(format!("reading size of {}", path.display())))?
            .len();
        let (live_bytes, live_entries) = kept.remove(&pack).unwrap_or_default();
        let payload = size.saturating_sub(PACK_HEADER_LEN).max(1);
        if live_bytes > 0 && live_bytes as f64 / payload as f64 >= opts.repack_below {
            continue;
        }
        report.packs_deleted += 1;
        report.bytes_reclaimed += size - live_bytes;
        if live_bytes > 0 {
            report.packs_rewritten += 1;
        }
        if opts.dry_run {
            continue;
        }
        if live_bytes > 0 {
            let Some(writer) = writer.as_mut() else {
                return Err(store.read_only_error("collect garbage"));
            };
            copy_live(store, writer, pack, size, live_entries)?;
        }
        let mut batch = sled::Batch::default();
        // Until the file is gone, its watermark says "all indexed", so a crash in between does not
        // re-index the swept records.
        batch.insert(&watermark_key(pack), &size.to_le_bytes());
        inner.index.apply_batch(batch)?;
        inner.db.flush()?;
        store.forget_reader(pack);
        fs::remove_file(&path).map_err(Error::io(format!("deleting pack {}", path.display())))?;
        sync_dir(&inner.packs_dir)?;
        inner.index.remove(watermark_key(pack))?;
    }
    Ok(report)
}

/// Copies the records of `pack` that the index points at (its live and in-grace chunks) to the
/// end of the current pack, a few MiB at a time, and points the index at the copies. The pack is
/// read in order and a record is copied only if it checks out and the index points at exactly it;
/// a live chunk whose record is damaged stops the collection with the pack in place. `entries` is
/// how many index entries point into the pack: each must find its record.
fn copy_live(
    store: &PackStore,
    writer: &mut super::Writer,
    pack: u32,
    size: u64,
    entries: u64,
) -> Result<()> {
    let inner = &store.inner;
    let path = pack_path(&inner.packs_dir, pack);
    let file = store
        .reader(pack)
        .map_err(Error::io(format!("opening pack {}", path.display())))?;
    let reader = PackReader {
        file: &file,
        len: size,
    };
    let io_err = || Error::io(format!("reading pack {}", path.display()));
    let mut copies: Vec<(crate::pack::RecordHeader, Vec<u8>, u64)> = Vec::new();
    let mut pending = 0u64;
    let flush = |copies: &mut Vec<(crate::pack::RecordHeader, Vec<u8>, u64)>,
                 writer: &mut super::Writer|
     -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        writer
            .append(
                copies.iter().map(|(h, b, at)| {
                    let (head, payload) = b.split_at(RECORD_HEADER_LEN);
                    (h, [head, payload], *at)
                }),
                &inner.packs_dir,
                inner.pack_target,
            )?
            .add_to(&mut batch);
        // The copies are synced: the index may point at them, the old pack still holds the
        // originals until it is deleted.
        inner.index.apply_batch(batch)?;
        copies.clear();
        Ok(())
    };
    let mut found = 0u64;
    reader.for_each_sound(
        |e| io_err()(e),
        |header, offset| {
            let indexed = inner
                .index
                .get(header.id.as_bytes())?
                .and_then(|v| IndexEntry::decode(&v))
                .filter(|e| e.pack == pack && e.offset == offset);
            if let Some(e) = indexed {
                let mut buf = vec![0u8; e.record_len() as usize];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset)
                    .map_err(io_err())?;
                pending += buf.len() as u64;
                found += 1;
                copies.push((header, buf, e.inserted_at));
                if pending >= COPY_BATCH {
                    flush(&mut copies, writer)?;
                    pending = 0;
                }
            }
            Ok(())
        },
    )?;
    flush(&mut copies, writer)?;
    if found == entries {
        return Ok(());
    }
    // An entry whose record did not check out still points into the pack: it stops the
    // collection here, before the pack is deleted. Only then is the index walked to name it.
    for kv in inner.index.iter() {
        let (k, v) = kv?;
        let (Some(id), Some(e)) = (super::index::chunk_key(&k), IndexEntry::decode(&v)) else {
            continue;
        };
        if e.pack == pack {
            return Err(corrupt(id, pack, e.offset, "damaged record"));
        }
    }
    Err(Error::Corrupt {
        id: ChunkId::from_bytes([0; 32]),
        pack,
        offset: 0,
        what: format!(
            "{entries} index entries point into the pack but {found} of their records were \
             found; garbage collection left the pack in place"
        ),
    })
}

fn corrupt(id: ChunkId, pack: u32, offset: u64, what: &str) -> Error {
    Error::Corrupt {
        id,
        pack,
        offset,
        what: format!("{what}; garbage collection left the pack in place"),
    }
}
