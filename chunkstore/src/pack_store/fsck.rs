//! fsck: read every record of every pack, check every hash, and check the index against the packs.

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;

use super::index::{IndexEntry, chunk_key, watermark_key};
use super::{PackStore, list_packs, lock, pack_path, unix_now};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::pack::{PACK_HEADER_LEN, PackReader, RecordAt, check_pack_header};

/// One thing fsck found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsckProblem {
    /// A pack file whose header is not a pack header; its records were not read.
    BadPack {
        /// The pack number.
        pack: u32,
        /// What is wrong.
        what: String,
    },
    /// A record whose bytes do not check out (`id` is `None` when the header itself is damaged).
    DamagedRecord {
        /// The pack number.
        pack: u32,
        /// Where the damage starts.
        offset: u64,
        /// The chunk, when the header could still be read.
        id: Option<ChunkId>,
        /// What did not check out.
        what: String,
    },
    /// Bytes at a pack's end that are not a whole record (a write cut off by a crash).
    TornTail {
        /// The pack number.
        pack: u32,
        /// Where the torn part starts.
        offset: u64,
        /// How many bytes follow.
        bytes: u64,
    },
    /// An index entry that does not point at a sound record of its chunk.
    BadEntry {
        /// The chunk.
        id: ChunkId,
        /// Where the index says it is.
        pack: u32,
        /// Where the index says it is.
        offset: u64,
        /// Whether another sound copy of the chunk exists in the packs (repair points to it).
        copy_elsewhere: bool,
    },
}

impl fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsckProblem::BadPack { pack, what } => write!(f, "pack {pack:08}: {what}"),
            FsckProblem::DamagedRecord {
                pack,
                offset,
                id: Some(id),
                what,
            } => write!(
                f,
                "pack {pack:08} offset {offset}: chunk {id} is damaged ({what})"
            ),
            FsckProblem::DamagedRecord {
                pack, offset, what, ..
            } => write!(f, "pack {pack:08} offset {offset}: {what}"),
            FsckProblem::TornTail {
                pack,
                offset,
                bytes,
            } => write!(
                f,
                "pack {pack:08} offset {offset}: {bytes} bytes of an unfinished record at the end"
            ),
            FsckProblem::BadEntry {
                id,
                pack,
                offset,
                copy_elsewhere,
            } => write!(
                f,
                "index entry for chunk {id} points at pack {pack:08} offset {offset}, where no sound \
                 record of it is{}",
                if *copy_elsewhere {
                    " (a sound copy exists elsewhere)"
                } else {
                    " (the chunk is lost)"
                }
            ),
        }
    }
}

/// What fsck checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Pack files read.
    pub packs: u64,
    /// Sound records found.
    pub records: u64,
    /// Index entries checked.
    pub index_entries: u64,
    /// Everything that is wrong, in the order found.
    pub problems: Vec<FsckProblem>,
    /// Chunks whose bytes are gone (their index entries were dropped if `repaired`).
    pub lost: Vec<ChunkId>,
    /// Whether the problems were repaired.
    pub repaired: bool,
}

impl FsckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(super) fn run(store: &PackStore, repair: bool) -> Result<FsckReport> {
    let inner = &store.inner;
    if repair && inner.read_only {
        return Err(store.read_only_error("be repaired"));
    }
    let mut writer = lock(&inner.writer);
    inner.indexer.settle()?;
    let mut report = FsckReport::default();
    // Nothing is held per record: each sound record is looked up in the index. `confirmed`
    // counts the entries found pointing at a sound record of their chunk (each entry points at
    // one place, so at most once each); if that is every entry, the index is sound without a
    // second look. `added`: entries a repair made for records nobody indexed.
    let (mut confirmed, mut added) = (0u64, 0u64);
    let mut sound_end: Vec<(u32, u64)> = Vec::new();
    let now = unix_now();

    for pack in list_packs(&inner.packs_dir)? {
        report.packs += 1;
        let path = pack_path(&inner.packs_dir, pack);
        let io_err = || Error::io(format!("checking pack {}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(repair)
            .open(&path)
            .map_err(io_err())?;
        let len = file.metadata().map_err(io_err())?.len();
        let mut head = [0u8; PACK_HEADER_LEN as usize];
        let head_ok = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
            .map_err(|e| e.to_string())
            .and_then(|()| check_pack_header(&head));
        if let Err(what) = head_ok {
            report.problems.push(FsckProblem::BadPack { pack, what });
            continue;
        }
        let reader = PackReader { file: &file, len };
        let mut offset = PACK_HEADER_LEN;
        loop {
            match reader.record_at(offset).map_err(io_err())? {
                RecordAt::Valid { header, next } => {
                    report.records += 1;
                    let here = |e: &IndexEntry| e.pack == pack && e.offset == offset;
                    match inner.index.get(header.id.as_bytes())? {
                        Some(v) => {
                            confirmed += u64::from(IndexEntry::decode(&v).is_some_and(|e| here(&e)))
                        }
                        None => match inner.unindexed.get(&header.id) {
                            Some(e) => confirmed += u64::from(here(e)),
                            // Nobody indexed it (a lost index update, or garbage already swept:
                            // gc sweeps it again): the first sound copy gets the entry.
                            None if repair => {
                                let e = IndexEntry::of(&header, pack, offset, now);
                                inner.index.insert(header.id.as_bytes(), &e.encode())?;
                                added += 1;
                            }
                            None => {}
                        },
                    }
                    offset = next;
                }
                RecordAt::BadPayload { header, next, what } => {
                    report.problems.push(FsckProblem::DamagedRecord {
                        pack,
                        offset,
                        id: Some(header.id),
                        what,
                    });
                    offset = next;
                }
                RecordAt::BadHeader => match reader.find_header_after(offset).map_err(io_err())? {
                    Some(resume) => {
                        report.problems.push(FsckProblem::DamagedRecord {
                            pack,
                            offset,
                            id: None,
                            what: format!("{} bytes that are not a record", resume - offset),
                        });
                        offset = resume;
                    }
                    None => {
                        report.problems.push(FsckProblem::TornTail {
                            pack,
                            offset,
                            bytes: len - offset,
                        });
                        break;
                    }
                },
                RecordAt::Torn => {
                    report.problems.push(FsckProblem::TornTail {
                        pack,
                        offset,
                        bytes: len - offset,
                    });
                    break;
                }
                RecordAt::End => break,
            }
        }
        sound_end.push((pack, offset));
        if repair && offset < len {
            file.set_len(offset)
                .and_then(|()| file.sync_data())
                .map_err(io_err())?;
            if let Some(w) = writer.as_mut().filter(|w| w.pack == pack) {
                w.len = offset;
            }
        }
    }

    // Count the entries (the walk added `added` of them); only if some were not confirmed, look
    // at each one's record, keeping the bad ones (as many as there is damage).
    let mut entries = 0u64;
    for k in inner.index.iter().keys() {
        entries += u64::from(chunk_key(&k?).is_some());
    }
    report.index_entries = entries - added + inner.unindexed.len() as u64;
    let mut bad: Vec<(ChunkId, Option<IndexEntry>)> = Vec::new();
    // The bad entries before this one are sled's, the rest a read-only open's.
    let mut sled_bad = 0;
    if confirmed < report.index_entries {
        let sound = |id: &ChunkId, e: &IndexEntry| store.read_entry(id, e).is_ok();
        for kv in inner.index.iter() {
            let (k, v) = kv?;
            let Some(id) = chunk_key(&k) else { continue };
            let entry = IndexEntry::decode(&v);
            if !entry.is_some_and(|e| sound(&id, &e)) {
                bad.push((id, entry));
            }
        }
        sled_bad = bad.len();
        for (id, e) in &inner.unindexed {
            if !sound(id, e) {
                bad.push((*id, Some(*e)));
            }
        }
    }
    // The first sound copy of each bad entry's chunk elsewhere: one more walk, only then.
    let copies = if bad.is_empty() {
        HashMap::new()
    } else {
        let wanted: HashMap<ChunkId, Option<(u32, u64)>> = bad
            .iter()
            .map(|(id, e)| (*id, e.map(|e| (e.pack, e.offset))))
            .collect();
        first_copies(store, &wanted, now)?
    };
    let mut fixes = sled::Batch::default();
    for (i, (id, entry)) in bad.iter().enumerate() {
        let copy = copies.get(id);
        report.problems.push(FsckProblem::BadEntry {
            id: *id,
            pack: entry.map_or(0, |e| e.pack),
            offset: entry.map_or(0, |e| e.offset),
            copy_elsewhere: copy.is_some(),
        });
        if i >= sled_bad {
            // A read-only open's entry in memory: reported, never repaired.
            continue;
        }
        match copy {
            Some(c) => fixes.insert(id.as_bytes(), &c.encode()),
            None => {
                report.lost.push(*id);
                fixes.remove(id.as_bytes());
            }
        }
    }
    if repair {
        for (pack, end) in sound_end {
            fixes.insert(&watermark_key(pack), &end.to_le_bytes());
        }
        inner.index.apply_batch(fixes)?;
        inner.db.flush()?;
        super::fill_presence(&inner.present, &inner.index, &inner.unindexed)?;
        report.repaired = true;
    }
    drop(writer);
    Ok(report)
}

/// The first sound record of each chunk of `wanted` that is not at the place given for it, in
/// pack and offset order, as index entries.
fn first_copies(
    store: &PackStore,
    wanted: &HashMap<ChunkId, Option<(u32, u64)>>,
    now: u64,
) -> Result<HashMap<ChunkId, IndexEntry>> {
    let inner = &store.inner;
    let mut found = HashMap::new();
    for pack in list_packs(&inner.packs_dir)? {
        let path = pack_path(&inner.packs_dir, pack);
        let io_err = || Error::io(format!("checking pack {}", path.display()));
        let file = std::fs::File::open(&path).map_err(io_err())?;
        let len = file.metadata().map_err(io_err())?.len();
        let mut head = [0u8; PACK_HEADER_LEN as usize];
        let head_ok = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
            .map_err(|e| e.to_string())
            .and_then(|()| check_pack_header(&head));
        if head_ok.is_err() {
            continue;
        }
        let reader = PackReader { file: &file, len };
        reader.for_each_sound(
            |e| io_err()(e),
            |header, offset| {
                if let Some(at) = wanted.get(&header.id)
                    && *at != Some((pack, offset))
                {
                    found
                        .entry(header.id)
                        .or_insert(IndexEntry::of(&header, pack, offset, now));
                }
                Ok(())
            },
        )?;
    }
    Ok(found)
}
