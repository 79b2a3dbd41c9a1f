//! Garbage collection of an [`ObjectChunkStore`]: mark, sweep the index, delete empty packs,
//! rewrite sparse ones.
//!
//! Order, and why each step is safe while other servers keep inserting and reading:
//! 1. **Mark**: every live manifest and every chunk it names. A live manifest the store lacks
//!    stops the collection before anything changes.
//! 2. **Sweep the index**: an entry neither marked nor younger than the grace period is removed
//!    (conditionally on its pack, see [`ChunkIndex::remove`]). A pack holding its bytes is
//!    harmless garbage until step 3.
//! 3. **Delete packs** that no entry points into any more and that were written more than the
//!    grace period ago. The age rule protects a pack another server has just PUT and whose
//!    entries it has not recorded yet: the grace period must exceed the time between a PUT and
//!    its record (a second or so; the default grace is an hour).
//! 4. **Repack**: a pack older than the grace period whose live fraction (bytes of the records
//!    its entries point at / the object's size) is below `repack_below` has those records
//!    copied, checked, into a new pack; once that PUT succeeded the entries are relocated
//!    (conditionally on the old pack), and the old pack is deleted only if no entry points into
//!    it any more. A reader that looked up the old location before the relocation finds the
//!    pack gone and looks the chunk up again.
//!
//! Clocks: an entry's insert time is the inserting server's clock, a pack's time of writing the
//! object store's; the grace period must also cover the skew between them (an hour covers any
//! sane one). A dry run changes nothing and reports the packs it would delete and rewrite, with
//! `bytes_reclaimed` 0.
//!
//! One collection at a time per store: the caller (the server) holds a lock or lease for it.
//!
//! **Commits that land while a collection runs.** A commit may reference a chunk that nothing
//! referenced for longer than the grace period (a file put back as it was a month ago). If the
//! commit lands after the mark read the live manifests, the mark did not see it; so the server
//! [`ChunkIndex::touch`]es the chunks and manifests a commit references before it checks that
//! they are present (`ChunkStore::missing_and_keep`, and `insert_batch` for a manifest that is
//! already stored), setting their index time to now when it is older than half the store's
//! minimum grace period `G` (in its config object; [`crate::ObjectChunkStore::min_grace`]). The sweep removes an entry
//! only if its time is still older than the collection's start minus its grace `g ≥ G`
//! ([`ChunkIndex::sweep`]). Suppose a commit touches at `t`, checks, and lands after the mark,
//! with `L` its check-to-land time (a database round trip or two) and `s` the collection's
//! start, so `t ≥ s − L`:
//! - touched before the sweep's removal: the entry's time is `t ≥ s − L > s − g`: kept;
//! - not touched because it was younger than `G/2`: its time is `> t − G/2 ≥ s − L − G/2`,
//!   which is `> s − g` while `L < G/2`: kept;
//! - removed before the touch: the commit's presence check, after the touch, finds it missing
//!   and the client uploads it again.
//!
//! An entry the sweep meant to remove but which was touched meanwhile stays, and so does its pack.
//! What the grace period cannot protect: a chunk inserted long ago, found present by a client's
//! `missing` just before the sweep removed it and then referenced by that client's commit. The
//! server's commit check catches it, and the client uploads it again.

use std::collections::{HashMap, HashSet};

use lbsync_chunkstore::pack::{PACK_HEADER_LEN, RecordHeader};
use lbsync_chunkstore::{ChunkId, GcOptions, GcReport, Manifest, ManifestId};

use crate::error::{Error, Result};
use crate::index::{ChunkIndex, Location, PackName};
use crate::pack::{PackBuilder, decode_record};
use crate::store::{ObjectChunkStore, now_ms};

/// Manifests read per batched read during the mark.
const MARK_BATCH: usize = 256;

/// Index entries removed per call.
const SWEEP_BATCH: usize = 10_000;

/// What the sweep leaves in a pack.
#[derive(Default, Clone, Copy)]
struct Kept {
    entries: u64,
    record_bytes: u64,
}

pub(crate) fn run(
    store: &ObjectChunkStore,
    live: &mut dyn Iterator<Item = ManifestId>,
    opts: &GcOptions,
) -> Result<GcReport> {
    let min_grace = store.inner.config.min_grace;
    if opts.grace < min_grace && !opts.dry_run {
        return Err(Error::GraceTooShort {
            grace: opts.grace,
            min: min_grace,
        });
    }
    // Taken before the mark: whatever is touched or inserted after the collection started is
    // younger than the cutoff however long the mark takes.
    let start = now_ms();
    let marked = mark(store, live)?;
    let index = &store.inner.index;
    let grace_ms = i64::try_from(opts.grace.as_millis()).unwrap_or(i64::MAX);
    // Entries (and packs) of this time or older are garbage unless marked.
    let cutoff = start.saturating_sub(grace_ms);
    let young = |t: i64| t > cutoff;
    let mut report = GcReport {
        live_chunks: marked.len() as u64,
        ..GcReport::default()
    };

    // 2. Sweep.
    let mut dead: Vec<(ChunkId, Location)> = Vec::new();
    let mut kept: HashMap<PackName, Kept> = HashMap::new();
    index.scan(&mut |id, loc, inserted| {
        if marked.contains(&id) || young(inserted) {
            if !marked.contains(&id) {
                report.kept_in_grace += 1;
            }
            let k = kept.entry(loc.pack).or_default();
            k.entries += 1;
            k.record_bytes += loc.record_len();
        } else {
            dead.push((id, loc));
            report.swept_chunks += 1;
            report.swept_bytes += u64::from(loc.raw_len);
        }
        Ok(())
    })?;
    if !opts.dry_run {
        for batch in dead.chunks(SWEEP_BATCH) {
            let entries: Vec<(ChunkId, PackName)> =
                batch.iter().map(|(id, loc)| (*id, loc.pack)).collect();
            let removed: HashSet<ChunkId> = index
                .sweep(&entries, cutoff.saturating_add(1))?
                .into_iter()
                .collect();
            for (id, loc) in batch {
                if removed.contains(id) {
                    store.inner.cache.remove(id);
                } else {
                    // Touched (or stored again) since the scan: it stays, and so does its pack.
                    report.swept_chunks -= 1;
                    report.swept_bytes -= u64::from(loc.raw_len);
                    let k = kept.entry(loc.pack).or_default();
                    k.entries += 1;
                    k.record_bytes += loc.record_len();
                }
            }
        }
    }
    drop(dead);

    // 3. and 4. Packs.
    let mut empty = Vec::new();
    let mut sparse = Vec::new();
    for (pack, meta) in store.list_packs()? {
        if young(meta.last_modified.timestamp_millis()) {
            continue;
        }
        match kept.get(&pack) {
            None => {
                empty.push(pack);
                report.bytes_reclaimed += meta.size;
            }
            // Live fraction: of the records' bytes (the pack header is not waste).
            Some(k)
                if (k.record_bytes as f64)
                    < opts.repack_below * meta.size.saturating_sub(PACK_HEADER_LEN) as f64 =>
            {
                sparse.push((pack, meta.size));
            }
            Some(_) => {}
        }
    }
    report.packs_deleted += empty.len() as u64;
    if opts.dry_run {
        report.packs_rewritten = sparse.len() as u64;
        report.packs_deleted += sparse.len() as u64;
        report.bytes_reclaimed = 0;
        return Ok(report);
    }
    store.delete_packs(&empty)?;
    // One more walk of the index finds the entries of every sparse pack.
    let mut in_sparse: HashMap<PackName, Vec<(ChunkId, Location)>> =
        sparse.iter().map(|(p, _)| (*p, Vec::new())).collect();
    index.scan(&mut |id, loc, _| {
        if let Some(entries) = in_sparse.get_mut(&loc.pack) {
            entries.push((id, loc));
        }
        Ok(())
    })?;
    for (pack, size) in sparse {
        let entries = in_sparse.remove(&pack).unwrap_or_default();
        if let Some(written) = repack(store, &pack, &entries)? {
            report.packs_rewritten += 1;
            report.packs_deleted += 1;
            report.bytes_reclaimed += size.saturating_sub(written);
        }
    }
    Ok(report)
}

/// Marks the live manifests and their chunks, reading the manifests in batches.
fn mark(
    store: &ObjectChunkStore,
    live: &mut dyn Iterator<Item = ManifestId>,
) -> Result<HashSet<ChunkId>> {
    let mut marked = HashSet::new();
    let mut batch: Vec<ManifestId> = Vec::with_capacity(MARK_BATCH);
    let flush = |batch: &mut Vec<ManifestId>, marked: &mut HashSet<ChunkId>| -> Result<()> {
        let ids: Vec<ChunkId> = batch.iter().map(|m| m.as_chunk_id()).collect();
        for (mid, bytes) in batch.drain(..).zip(store.read(&ids)?) {
            let bytes = bytes.ok_or(lbsync_chunkstore::Error::MissingManifest(mid))?;
            let manifest = Manifest::decode(&bytes)?;
            marked.extend(manifest.chunks().iter().map(|c| c.id));
        }
        Ok(())
    };
    for mid in live {
        if marked.insert(mid.as_chunk_id()) {
            batch.push(mid);
            if batch.len() == MARK_BATCH {
                flush(&mut batch, &mut marked)?;
            }
        }
    }
    flush(&mut batch, &mut marked)?;
    Ok(marked)
}

/// Copies the records that `entries` (those pointing into `pack`) point at into new packs, relocates the
/// entries, and deletes `pack` if nothing points into it any more. Returns the bytes written,
/// or `None` if the old pack had to stay (a record in it did not check out, or an entry did not
/// move).
fn repack(
    store: &ObjectChunkStore,
    pack: &PackName,
    entries: &[(ChunkId, Location)],
) -> Result<Option<u64>> {
    let index: &dyn ChunkIndex = &*store.inner.index;
    if entries.is_empty() {
        store.delete_packs(std::slice::from_ref(pack))?;
        return Ok(Some(0));
    }
    let object = store.fetch_pack(pack)?;
    let mut builders = vec![PackBuilder::new()?];
    let mut damaged = false;
    for (id, loc) in entries {
        let range = loc.range();
        let Some(record) = object.get(range.start as usize..range.end as usize) else {
            damaged = true;
            continue;
        };
        // Never copy bytes that do not check out: such an entry stays, and so does the pack.
        if decode_record(id, loc, record).is_err() {
            damaged = true;
            continue;
        }
        let header = RecordHeader::decode(record).expect("decode_record checked the header");
        let builder = builders.last_mut().expect("never empty");
        if builder.len() + loc.record_len() > store.inner.opts.pack_target
            && !builder.entries.is_empty()
        {
            builders.push(PackBuilder::new()?);
        }
        let builder = builders.last_mut().expect("never empty");
        let start = range.start as usize;
        let head = object.slice(start..start + lbsync_chunkstore::pack::RECORD_HEADER_LEN);
        let payload = object.slice(start + head.len()..range.end as usize);
        builder.push(&header, head, payload);
    }
    builders.retain(|b| !b.entries.is_empty());
    let written: u64 = builders.iter().map(|b| b.len()).sum();
    let moves: Vec<(ChunkId, PackName, Location)> = builders
        .iter()
        .flat_map(|b| b.entries.iter().map(|(id, to)| (*id, *pack, *to)))
        .collect();
    // The new packs' entries are relocations, not new records: store the packs without
    // recording, then move the entries.
    store.put_packs_unrecorded(&builders)?;
    index.relocate(&moves)?;
    let ids: Vec<ChunkId> = entries.iter().map(|(id, _)| *id).collect();
    let still = index
        .lookup(&ids)?
        .into_iter()
        .any(|l| l.is_some_and(|l| l.pack == *pack));
    if damaged || still {
        return Ok(None);
    }
    store.delete_packs(std::slice::from_ref(pack))?;
    Ok(Some(written))
}
