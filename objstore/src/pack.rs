//! Pack objects: their names, how a batch of chunks becomes packs, how reads of neighbouring
//! records are coalesced, and how a fetched record is checked.
//!
//! A pack object holds exactly what a pack file of `lbsync_chunkstore::PackStore` holds (the
//! 16-byte pack header, then records; see `lbsync_chunkstore::pack`), written once by one PUT and
//! never changed. Layout under the store's prefix:
//!
//! ```text
//! PREFIX/config                          the store's id and chunk params (JSON), written once
//! PREFIX/packs/<2 hex>/<32 hex>.pack     pack objects, named by 16 random bytes
//! ```

use std::ops::Range;

use bytes::Bytes;
use lbsync_chunkstore::ChunkId;
use lbsync_chunkstore::pack::{
    PACK_HEADER_LEN, RECORD_HEADER_LEN, Record, RecordHeader, check_pack_header, decode_payload,
    pack_header,
};
use object_store::PutPayload;
use object_store::path::Path;

use crate::error::Result;
use crate::index::{Location, PackName};

/// The config object's path.
pub(crate) fn config_path(prefix: &Path) -> Path {
    prefix.clone().join("config")
}

/// The directory of the pack objects.
pub(crate) fn packs_dir(prefix: &Path) -> Path {
    prefix.clone().join("packs")
}

/// A pack object's path: `PREFIX/packs/<first 2 hex digits>/<32 hex digits>.pack`. The fan-out
/// keeps listings of one directory short on stores that list by delimiter.
pub(crate) fn pack_path(prefix: &Path, name: &PackName) -> Path {
    let hex = name.to_string();
    packs_dir(prefix)
        .join(&hex[..2])
        .join(format!("{hex}.pack"))
}

/// The pack name of a listed object's path, or `None` for anything that is not a pack object.
pub(crate) fn pack_name_of(path: &Path) -> Option<PackName> {
    let mut parts = path.parts().collect::<Vec<_>>().into_iter().rev();
    let file = parts.next()?;
    let fan = parts.next()?;
    let name: PackName = file.as_ref().strip_suffix(".pack")?.parse().ok()?;
    (name.to_string()[..2] == *fan.as_ref()).then_some(name)
}

/// A pack object being put together: its parts share the records' bytes.
pub(crate) struct PackBuilder {
    pub(crate) name: PackName,
    parts: Vec<Bytes>,
    len: u64,
    pub(crate) entries: Vec<(ChunkId, Location)>,
}

impl PackBuilder {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            name: PackName::random()?,
            parts: vec![Bytes::copy_from_slice(&pack_header())],
            len: PACK_HEADER_LEN,
            entries: Vec::new(),
        })
    }

    /// The object's length so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a record whose header bytes are `head` and payload `payload`.
    pub(crate) fn push(&mut self, header: &RecordHeader, head: Bytes, payload: Bytes) {
        self.entries.push((
            header.id,
            Location {
                pack: self.name,
                offset: self.len,
                stored_len: header.stored_len,
                raw_len: header.raw_len,
            },
        ));
        self.len += (head.len() + payload.len()) as u64;
        self.parts.push(head);
        self.parts.push(payload);
    }

    /// The object's bytes, as a payload that shares the parts.
    pub(crate) fn payload(&self) -> PutPayload {
        self.parts.iter().cloned().collect()
    }
}

/// Packs of the records, in order, each at most `target` bytes (a record larger than that gets a
/// pack of its own).
pub(crate) fn build_packs(records: Vec<Record>, target: u64) -> Result<Vec<PackBuilder>> {
    let mut packs: Vec<PackBuilder> = Vec::new();
    for r in records {
        let len = RECORD_HEADER_LEN as u64 + r.payload.len() as u64;
        let full = packs
            .last()
            .is_none_or(|p| p.len() + len > target && !p.entries.is_empty());
        if full {
            packs.push(PackBuilder::new()?);
        }
        let pack = packs.last_mut().expect("pushed above");
        pack.push(&r.header, Bytes::copy_from_slice(&r.head), r.payload);
    }
    Ok(packs)
}

/// One ranged GET that serves several wanted records of one pack.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) range: Range<u64>,
    /// The wanted records it covers: (the caller's tag, the record's range in the pack).
    pub(crate) members: Vec<(usize, Range<u64>)>,
}

/// Merges the wanted ranges of one pack into spans: neighbours whose gap is at most `max_gap`
/// share a GET while the span stays under `max_span` bytes (a single record longer than that
/// still gets its own span). Overlapping or repeated ranges are fine.
pub(crate) fn coalesce(
    mut wants: Vec<(usize, Range<u64>)>,
    max_gap: u64,
    max_span: u64,
) -> Vec<Span> {
    wants.sort_by_key(|(_, r)| (r.start, r.end));
    let mut spans: Vec<Span> = Vec::new();
    for (tag, r) in wants {
        if let Some(last) = spans.last_mut() {
            let joined_end = last.range.end.max(r.end);
            if r.start <= last.range.end + max_gap && joined_end - last.range.start <= max_span {
                last.range.end = joined_end;
                last.members.push((tag, r));
                continue;
            }
        }
        spans.push(Span {
            range: r.clone(),
            members: vec![(tag, r)],
        });
    }
    spans
}

/// The chunk in a fetched record that the index says holds `id` at `loc`: the header must be
/// sound and agree, the payload must decompress to the length and hash to the id. The error says
/// what did not check out.
pub(crate) fn decode_record(id: &ChunkId, loc: &Location, record: &[u8]) -> Result<Bytes, String> {
    if record.len() as u64 != loc.record_len() {
        return Err(format!(
            "{} bytes came back where the record is {}: the object is shorter than the index says",
            record.len(),
            loc.record_len()
        ));
    }
    let header = RecordHeader::decode(record).ok_or("the record header is damaged".to_string())?;
    if header.id != *id {
        return Err(format!("the record there holds chunk {}", header.id));
    }
    if header.stored_len != loc.stored_len || header.raw_len != loc.raw_len {
        return Err("the record's lengths disagree with the index".into());
    }
    decode_payload(&header, &record[RECORD_HEADER_LEN..])
}

/// A record found in a whole pack object.
pub(crate) struct FoundRecord {
    pub(crate) header: RecordHeader,
    pub(crate) offset: u64,
}

/// The sound records of a whole pack object (header checksum good, payload hashing to its id), in
/// order, and the number of damaged stretches passed over (each resumes at the next sound header).
pub(crate) fn records_of(object: &Bytes) -> Result<(Vec<FoundRecord>, u64), String> {
    check_pack_header(object)?;
    let mut out = Vec::new();
    let mut damaged = 0;
    let mut offset = PACK_HEADER_LEN as usize;
    let mut in_damage = false;
    while offset + RECORD_HEADER_LEN <= object.len() {
        let sound = RecordHeader::decode(&object[offset..]).and_then(|h| {
            let end = offset + h.record_len() as usize;
            (end <= object.len()
                && decode_payload(&h, &object[offset + RECORD_HEADER_LEN..end]).is_ok())
            .then_some((h, end))
        });
        match sound {
            Some((header, end)) => {
                out.push(FoundRecord {
                    header,
                    offset: offset as u64,
                });
                offset = end;
                in_damage = false;
            }
            None => {
                if !in_damage {
                    damaged += 1;
                    in_damage = true;
                }
                offset += 1;
            }
        }
    }
    if offset < object.len() && !in_damage {
        damaged += 1;
    }
    Ok((out, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbsync_chunkstore::Chunk;

    #[test]
    fn pack_paths_fan_out_and_parse_back() {
        let prefix = Path::from("a/b");
        let name = PackName::from_bytes([0x3f; 16]);
        let path = pack_path(&prefix, &name);
        assert_eq!(path.as_ref(), format!("a/b/packs/3f/{name}.pack"));
        assert_eq!(pack_name_of(&path), Some(name));
        assert_eq!(
            pack_name_of(&Path::from(format!("packs/00/{name}.pack"))),
            None
        );
        assert_eq!(pack_name_of(&Path::from("a/b/config")), None);
        assert_eq!(config_path(&Path::default()).as_ref(), "config");
    }

    #[test]
    fn neighbouring_ranges_share_a_get() {
        let wants = vec![
            (0, 1000..1100),
            (1, 16..100),
            (2, 100..200),
            (3, 250..300),
            (4, 100..200),
            (5, 5000..9000),
        ];
        let spans = coalesce(wants, 100, 1 << 20);
        let ranges: Vec<_> = spans.iter().map(|s| s.range.clone()).collect();
        assert_eq!(ranges, vec![16..300, 1000..1100, 5000..9000]);
        let tags: Vec<usize> = spans[0].members.iter().map(|m| m.0).collect();
        assert_eq!(tags, vec![1, 2, 4, 3]);
        // A span stays under its cap.
        let spans = coalesce(vec![(0, 0..600), (1, 600..1200)], 100, 1000);
        assert_eq!(spans.len(), 2);
    }

    #[test]
    fn packs_are_capped_and_their_records_decode() {
        let chunks: Vec<Chunk> = (0..10u8).map(|n| Chunk::new(vec![n; 1000])).collect();
        let records: Vec<Record> = chunks.iter().map(Record::encode).collect();
        let sizes: Vec<u64> = records.iter().map(|r| r.header.record_len()).collect();
        let packs = build_packs(records, 16 + sizes[0] * 3 + 1).unwrap();
        assert!(packs.len() >= 3, "capped: {}", packs.len());
        for pack in &packs {
            let object = Bytes::from(pack.payload());
            assert_eq!(object.len() as u64, pack.len());
            let (found, damaged) = records_of(&object).unwrap();
            assert_eq!((found.len(), damaged), (pack.entries.len(), 0));
            for ((id, loc), rec) in pack.entries.iter().zip(&found) {
                assert_eq!(rec.offset, loc.offset);
                let bytes = &object[loc.range().start as usize..loc.range().end as usize];
                let data = decode_record(id, loc, bytes).unwrap();
                assert_eq!(ChunkId::of(&data), *id);
            }
        }
    }

    #[test]
    fn a_damaged_record_is_refused_and_skipped() {
        let chunks: Vec<Chunk> = (0..3u8)
            .map(|n| Chunk::new(vec![n; 2000]).keep_raw())
            .collect();
        let records: Vec<Record> = chunks.iter().map(Record::encode).collect();
        let pack = build_packs(records, 1 << 20).unwrap().pop().unwrap();
        let mut object = Bytes::from(pack.payload()).to_vec();
        let (id, loc) = pack.entries[1];
        object[loc.offset as usize + RECORD_HEADER_LEN + 10] ^= 1;
        let bytes = &object[loc.range().start as usize..loc.range().end as usize];
        let err = decode_record(&id, &loc, bytes).unwrap_err();
        assert!(err.contains("hash to"), "{err}");
        let err = decode_record(&id, &loc, &bytes[..100]).unwrap_err();
        assert!(err.contains("shorter"), "{err}");
        let (found, damaged) = records_of(&Bytes::from(object)).unwrap();
        let ids: Vec<ChunkId> = found.iter().map(|r| r.header.id).collect();
        assert_eq!(ids, vec![chunks[0].id(), chunks[2].id()]);
        assert_eq!(damaged, 1);
    }
}
