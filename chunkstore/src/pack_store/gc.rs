//! Garbage collection of a [`PackStore`]: mark, sweep the index, rewrite sparse packs.
//!
//! Crash safety, step by step: sweeping only removes index entries (a pack still holding the bytes
//! is harmless). A rewritten pack's live records are appended to the current pack and synced, the
//! index is pointed at the copies and flushed, and only then is the old pack deleted. A crash
//! between any two steps leaves every indexed chunk readable.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;

use super::index::{IndexEntry, watermark_key};
use super::{PackStore, list_packs, lock, pack_path, sync_dir, unix_now};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ManifestId};
use crate::pack::{PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordHeader, decode_payload};
use crate::store::{GcOptions, GcReport, mark};

pub(super) fn run(
    store: &PackStore,
    live: &mut dyn Iterator<Item = ManifestId>,
    opts: &GcOptions,
) -> Result<GcReport> {
    let marked = mark(store, live)?;
    let inner = &store.inner;
    if inner.read_only && !opts.dry_run {
        return Err(store.read_only_error("collect garbage"));
    }
    let mut writer = lock(&inner.writer);
    inner.indexer.settle()?;
    let now = unix_now();
    let grace = opts.grace.as_secs();
    let mut report = GcReport {
        live_chunks: marked.len() as u64,
        ..GcReport::default()
    };

    // Sweep.
    let mut dead = Vec::new();
    let mut kept: HashMap<u32, Vec<(ChunkId, IndexEntry)>> = HashMap::new();
    for kv in store.entries() {
        let (id, entry) = kv?;
        if marked.contains(&id) {
            kept.entry(entry.pack).or_default().push((id, entry));
        } else if now.saturating_sub(entry.inserted_at) < grace {
            report.kept_in_grace += 1;
            kept.entry(entry.pack).or_default().push((id, entry));
        } else {
            report.swept_chunks += 1;
            report.swept_bytes += u64::from(entry.raw_len);
            dead.push(id);
        }
    }
    if !opts.dry_run && !dead.is_empty() {
        let mut batch = sled::Batch::default();
        for id in &dead {
            batch.remove(id.as_bytes());
        }
        inner.index.apply_batch(batch)?;
        inner.present.remove_all(&dead);
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
        let live = kept.remove(&pack).unwrap_or_default();
        let live_bytes: u64 = live.iter().map(|(_, e)| e.record_len()).sum();
        let payload = size.saturating_sub(PACK_HEADER_LEN).max(1);
        if !live.is_empty() && live_bytes as f64 / payload as f64 >= opts.repack_below {
            continue;
        }
        report.packs_deleted += 1;
        report.bytes_reclaimed += size - live_bytes;
        if !live.is_empty() {
            report.packs_rewritten += 1;
        }
        if opts.dry_run {
            continue;
        }
        let mut batch = sled::Batch::default();
        if !live.is_empty() {
            let file = store
                .reader(pack)
                .map_err(Error::io(format!("opening pack {}", path.display())))?;
            let mut copies = Vec::with_capacity(live.len());
            for (id, e) in &live {
                let mut buf = vec![0u8; e.record_len() as usize];
                file.read_exact_at(&mut buf, e.offset)
                    .map_err(Error::io(format!(
                        "reading {} at {}",
                        path.display(),
                        e.offset
                    )))?;
                let header = RecordHeader::decode(&buf)
                    .filter(|h| h.id == *id)
                    .ok_or_else(|| corrupt(*id, pack, e.offset, "damaged record header"))?;
                decode_payload(&header, &buf[RECORD_HEADER_LEN..])
                    .map_err(|what| corrupt(*id, pack, e.offset, &what))?;
                copies.push((header, buf, e.inserted_at));
            }
            let Some(writer) = writer.as_mut() else {
                return Err(store.read_only_error("collect garbage"));
            };
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
        }
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

fn corrupt(id: ChunkId, pack: u32, offset: u64, what: &str) -> Error {
    Error::Corrupt {
        id,
        pack,
        offset,
        what: format!("{what}; garbage collection left the pack in place"),
    }
}
