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
    // Where each sound record is, and the first sound copy of each chunk.
    let mut sound_at: HashMap<(u32, u64), ChunkId> = HashMap::new();
    let mut first_copy: HashMap<ChunkId, IndexEntry> = HashMap::new();
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
                    sound_at.insert((pack, offset), header.id);
                    first_copy
                        .entry(header.id)
                        .or_insert(IndexEntry::of(&header, pack, offset, now));
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

    let mut fixes = sled::Batch::default();
    let mut indexed = std::collections::HashSet::new();
    for kv in inner.index.iter() {
        let (k, v) = kv?;
        let Some(id) = chunk_key(&k) else { continue };
        report.index_entries += 1;
        indexed.insert(id);
        let entry = IndexEntry::decode(&v);
        let sound = entry.is_some_and(|e| sound_at.get(&(e.pack, e.offset)) == Some(&id));
        if sound {
            continue;
        }
        let copy = first_copy.get(&id);
        report.problems.push(FsckProblem::BadEntry {
            id,
            pack: entry.map_or(0, |e| e.pack),
            offset: entry.map_or(0, |e| e.offset),
            copy_elsewhere: copy.is_some(),
        });
        match copy {
            Some(c) => fixes.insert(id.as_bytes(), &c.encode()),
            None => {
                report.lost.push(id);
                fixes.remove(id.as_bytes());
            }
        }
    }
    // What a read-only open found past the watermarks: sound records when it scanned them.
    for (id, e) in &inner.unindexed {
        report.index_entries += 1;
        indexed.insert(*id);
        if sound_at.get(&(e.pack, e.offset)) != Some(id) {
            report.problems.push(FsckProblem::BadEntry {
                id: *id,
                pack: e.pack,
                offset: e.offset,
                copy_elsewhere: first_copy.contains_key(id),
            });
        }
    }
    if repair {
        // Records nobody indexed (lost index updates, or garbage already swept: gc sweeps it again).
        for (id, e) in &first_copy {
            if !indexed.contains(id) {
                fixes.insert(id.as_bytes(), &e.encode());
            }
        }
        for (pack, end) in sound_end {
            fixes.insert(&watermark_key(pack), &end.to_le_bytes());
        }
        inner.index.apply_batch(fixes)?;
        inner.db.flush()?;
        inner.present.replace(super::indexed_ids(&inner.index)?);
        report.repaired = true;
    }
    drop(writer);
    Ok(report)
}
