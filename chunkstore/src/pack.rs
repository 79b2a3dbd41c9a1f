//! The pack file format: self-describing chunk records, appended and never rewritten in place.
//!
//! ```text
//! pack file   = pack header, record*
//! pack header = "LBSPACK\0" (8) | u32 format version = 1 | u32 reserved = 0        (16 bytes)
//! record      = record header (56 bytes) | payload (stored_len bytes)
//! record header:
//!   "LBCR" (4) | u8 flags (bit 0: payload is zstd) | 3 reserved zero bytes
//!   | [u8; 32] chunk id | u32 stored_len | u32 raw_len
//!   | [u8; 8] checksum: the first 8 bytes of BLAKE3 of the 48 bytes before it
//! ```
//!
//! All integers are little-endian. A record carries everything needed to index it, so the index
//! can be rebuilt from the packs alone; the header checksum tells a record from torn or stray bytes,
//! and the payload is checked by hashing it back to the chunk id.
//!
//! The format is shared by every store that keeps packs: `PackStore`'s files and the
//! object store's immutable pack objects (`lbsync-objstore`) hold the same header and records, so
//! one decoder reads both. Public for those stores: [`pack_header`], [`check_pack_header`],
//! [`Record::encode`] (with the compression decision), [`RecordHeader::decode`] and
//! [`decode_payload`] (decompression and the hash check).

#[cfg(feature = "sled")]
use std::fs::File;
#[cfg(feature = "sled")]
use std::io;
#[cfg(feature = "sled")]
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use crate::chunk::Chunk;
use crate::id::ChunkId;

pub(crate) const PACK_MAGIC: &[u8; 8] = b"LBSPACK\0";
pub(crate) const PACK_VERSION: u32 = 1;
/// The length of the header every pack starts with ([`pack_header`]).
pub const PACK_HEADER_LEN: u64 = 16;
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"LBCR";
/// The length of a record header; the payload follows it.
pub const RECORD_HEADER_LEN: usize = 56;
pub(crate) const FLAG_ZSTD: u8 = 1;
/// The most a record can hold: a chunk, or the longest manifest.
pub(crate) const MAX_RECORD_RAW_LEN: u64 =
    if crate::manifest::MAX_MANIFEST_BYTES > crate::MAX_CHUNK_LIMIT as u64 {
        crate::manifest::MAX_MANIFEST_BYTES
    } else {
        crate::MAX_CHUNK_LIMIT as u64
    };
const KNOWN_FLAGS: u8 = FLAG_ZSTD;

/// The header a pack starts with: magic and format version.
pub fn pack_header() -> [u8; PACK_HEADER_LEN as usize] {
    let mut h = [0u8; PACK_HEADER_LEN as usize];
    h[..8].copy_from_slice(PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h
}

/// Checks a pack file's header; the error says what is wrong.
pub fn check_pack_header(h: &[u8]) -> Result<(), String> {
    if h.len() < PACK_HEADER_LEN as usize {
        return Err(format!("{} bytes is shorter than the pack header", h.len()));
    }
    if &h[..8] != PACK_MAGIC {
        return Err("does not start with the pack magic \"LBSPACK\"".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != PACK_VERSION {
        return Err(format!(
            "pack format version {version} is not {PACK_VERSION}: written by a newer lbsync?"
        ));
    }
    Ok(())
}

/// A record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bit 0: the payload is a zstd frame.
    pub flags: u8,
    /// The chunk the record holds.
    pub id: ChunkId,
    /// The payload's length.
    pub stored_len: u32,
    /// The chunk's length (the payload's, decompressed).
    pub raw_len: u32,
}

impl RecordHeader {
    /// The header's 56 bytes, checksum included.
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[..4].copy_from_slice(RECORD_MAGIC);
        h[4] = self.flags;
        h[8..40].copy_from_slice(self.id.as_bytes());
        h[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        h[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        let sum = blake3::hash(&h[..48]);
        h[48..56].copy_from_slice(&sum.as_bytes()[..8]);
        h
    }

    /// `None` unless the bytes are a well-formed header with a matching checksum and lengths the
    /// store could have written.
    pub fn decode(h: &[u8]) -> Option<Self> {
        let h: &[u8; RECORD_HEADER_LEN] = h.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
        if &h[..4] != RECORD_MAGIC || h[5..8] != [0, 0, 0] || h[4] & !KNOWN_FLAGS != 0 {
            return None;
        }
        if blake3::hash(&h[..48]).as_bytes()[..8] != h[48..56] {
            return None;
        }
        let header = Self {
            flags: h[4],
            id: ChunkId::from_slice(&h[8..40])?,
            stored_len: u32::from_le_bytes(h[40..44].try_into().ok()?),
            raw_len: u32::from_le_bytes(h[44..48].try_into().ok()?),
        };
        // Lengths the store could have written: a record holds a chunk or a manifest, kept raw or
        // compressed to fewer bytes. Anything else would make a reader allocate what the header
        // claims.
        let compressed = header.flags & FLAG_ZSTD != 0;
        let sane = u64::from(header.raw_len) <= MAX_RECORD_RAW_LEN
            && if compressed {
                header.stored_len < header.raw_len
            } else {
                header.stored_len == header.raw_len
            };
        sane.then_some(header)
    }

    /// The record's length: header and payload.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.stored_len)
    }
}

/// A chunk encoded as a record, compressed when that saves at least 1/32 of its size. The payload
/// shares the chunk's bytes when stored raw: records are written with vectored I/O, not copied.
pub struct Record {
    /// The header, decoded.
    pub header: RecordHeader,
    /// The header's bytes ([`RecordHeader::encode`]).
    pub head: [u8; RECORD_HEADER_LEN],
    /// The payload: the chunk's bytes, or a zstd frame of them.
    pub payload: Bytes,
}

impl Record {
    /// Encodes a chunk. A chunk that arrived as a zstd frame keeps it (when it pays), one its
    /// sender marked raw stays raw, and any other is compressed here when that saves ≥ 1/32.
    pub fn encode(chunk: &Chunk) -> Record {
        use crate::chunk::Packed;
        let raw = chunk.data();
        // What the sender found is used as it is: compressing again would cost as much as
        // hashing, for the same bytes.
        let (flags, payload) = match chunk.packed() {
            Packed::Zstd(z) if crate::compress::pays(z.len(), raw.len()) => (FLAG_ZSTD, z.clone()),
            Packed::Zstd(_) | Packed::Raw => (0, raw.clone()),
            Packed::Unknown => match crate::compress::compress_if_smaller(raw) {
                Some(z) => (FLAG_ZSTD, Bytes::from(z)),
                None => (0, raw.clone()),
            },
        };
        let header = RecordHeader {
            flags,
            id: chunk.id(),
            stored_len: payload.len() as u32,
            raw_len: raw.len() as u32,
        };
        Record {
            header,
            head: header.encode(),
            payload,
        }
    }

    /// The record's bytes in one buffer (tests and tools; the store writes the two parts).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        [&self.head[..], &self.payload[..]].concat()
    }
}

/// The chunk's bytes from a record's payload: decompressed and checked against the header's id.
/// The error says what did not check out.
pub fn decode_payload(h: &RecordHeader, payload: &[u8]) -> Result<Bytes, String> {
    let raw = if h.flags & FLAG_ZSTD != 0 {
        let out = crate::compress::decompress(payload, h.raw_len as usize);
        Bytes::from(out.map_err(|e| format!("zstd payload does not decompress: {e}"))?)
    } else {
        Bytes::copy_from_slice(payload)
    };
    if raw.len() != h.raw_len as usize {
        return Err(format!(
            "{} bytes where the header says {}",
            raw.len(),
            h.raw_len
        ));
    }
    let actual = ChunkId::of(&raw);
    if actual != h.id {
        return Err(format!("bytes hash to {actual}"));
    }
    Ok(raw)
}

/// What lies at an offset of a pack file.
#[cfg(feature = "sled")]
#[derive(Debug)]
pub(crate) enum RecordAt {
    /// A record whose payload checks out.
    Valid { header: RecordHeader, next: u64 },
    /// A well-formed header whose payload is complete but does not check out.
    BadPayload {
        header: RecordHeader,
        next: u64,
        what: String,
    },
    /// A header or payload cut off by the end of the file.
    Torn,
    /// Bytes that are not a record header.
    BadHeader,
    /// The end of the file.
    End,
}

/// Reads records of one pack file with positional reads.
#[cfg(feature = "sled")]
pub(crate) struct PackReader<'a> {
    pub(crate) file: &'a File,
    pub(crate) len: u64,
}

#[cfg(feature = "sled")]
impl PackReader<'_> {
    /// Calls `each` with the header and offset of every sound record, in order, passing over a
    /// damaged payload or header as recovery does, until a torn tail or the end. `io_err` puts a
    /// read error in words.
    pub(crate) fn for_each_sound<E>(
        &self,
        io_err: impl Fn(io::Error) -> E,
        mut each: impl FnMut(RecordHeader, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut offset = PACK_HEADER_LEN;
        loop {
            match self.record_at(offset).map_err(&io_err)? {
                RecordAt::Valid { header, next } => {
                    each(header, offset)?;
                    offset = next;
                }
                RecordAt::BadPayload { next, .. } => offset = next,
                RecordAt::BadHeader => match self.find_header_after(offset).map_err(&io_err)? {
                    Some(resume) => offset = resume,
                    None => return Ok(()),
                },
                RecordAt::Torn | RecordAt::End => return Ok(()),
            }
        }
    }

    pub(crate) fn record_at(&self, offset: u64) -> io::Result<RecordAt> {
        if offset >= self.len {
            return Ok(RecordAt::End);
        }
        if self.len - offset < RECORD_HEADER_LEN as u64 {
            return Ok(RecordAt::Torn);
        }
        let mut hbuf = [0u8; RECORD_HEADER_LEN];
        self.file.read_exact_at(&mut hbuf, offset)?;
        let Some(header) = RecordHeader::decode(&hbuf) else {
            return Ok(RecordAt::BadHeader);
        };
        let next = offset + header.record_len();
        if next > self.len {
            return Ok(RecordAt::Torn);
        }
        let mut payload = vec![0u8; header.stored_len as usize];
        self.file
            .read_exact_at(&mut payload, offset + RECORD_HEADER_LEN as u64)?;
        Ok(match decode_payload(&header, &payload) {
            Ok(_) => RecordAt::Valid { header, next },
            Err(what) => RecordAt::BadPayload { header, next, what },
        })
    }

    /// The offset of the next sound record (a well-formed header and a payload that hashes to
    /// its id) after `offset`, if any: where a scan resumes after damaged bytes.
    pub(crate) fn next_sound_after(&self, mut offset: u64) -> io::Result<Option<u64>> {
        while let Some(at) = self.find_header_after(offset)? {
            if let RecordAt::Valid { .. } = self.record_at(at)? {
                return Ok(Some(at));
            }
            offset = at;
        }
        Ok(None)
    }

    /// The offset of the next well-formed record header after `offset`, if any: how a scan
    /// resynchronises after damaged bytes.
    pub(crate) fn find_header_after(&self, offset: u64) -> io::Result<Option<u64>> {
        const WINDOW: usize = 1 << 20;
        let mut pos = offset + 1;
        let mut buf = vec![0u8; WINDOW + RECORD_HEADER_LEN];
        while pos + RECORD_HEADER_LEN as u64 <= self.len {
            let n = ((self.len - pos) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], pos)?;
            let searchable = n.saturating_sub(RECORD_HEADER_LEN - 1);
            for i in 0..searchable {
                if &buf[i..i + 4] == RECORD_MAGIC
                    && RecordHeader::decode(&buf[i..i + RECORD_HEADER_LEN]).is_some()
                {
                    return Ok(Some(pos + i as u64));
                }
            }
            pos += searchable.max(1) as u64;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checksum() {
        let h = RecordHeader {
            flags: FLAG_ZSTD,
            id: ChunkId::of(b"x"),
            stored_len: 10,
            raw_len: 20,
        };
        let mut enc = h.encode();
        assert_eq!(RecordHeader::decode(&enc), Some(h));
        enc[41] ^= 1;
        assert_eq!(
            RecordHeader::decode(&enc),
            None,
            "a flipped length bit is caught"
        );
    }

    #[test]
    fn compressible_chunks_are_compressed_and_random_ones_are_not() {
        let text = Chunk::new(b"all work and no play ".repeat(500));
        let rec = Record::encode(&text);
        assert_eq!(rec.header.flags, FLAG_ZSTD);
        assert!(rec.payload.len() < text.len() / 4);
        assert_eq!(
            decode_payload(&rec.header, &rec.payload).unwrap(),
            text.data()
        );

        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let noise = Chunk::new(
            blake3::Hasher::new()
                .update(&noise)
                .finalize_xof_reader_bytes(8192),
        );
        let rec = Record::encode(&noise);
        assert_eq!(rec.header.flags, 0);
        assert_eq!(rec.to_vec().len(), RECORD_HEADER_LEN + noise.len());
    }

    #[test]
    fn what_the_sender_found_is_kept_as_it_is() {
        let text = b"all work and no play ".repeat(500);
        let frame = Bytes::from(crate::compress_if_smaller(&text).unwrap());
        let sent = Chunk::from_zstd(ChunkId::of(&text), frame.clone(), text.len()).unwrap();
        let rec = Record::encode(&sent);
        assert_eq!((rec.header.flags, &rec.payload), (FLAG_ZSTD, &frame));

        let raw = Record::encode(&Chunk::new(text.clone()).keep_raw());
        assert_eq!(raw.header.flags, 0, "not compressed again");
        assert_eq!(raw.payload, text);
        for rec in [rec, raw] {
            assert_eq!(decode_payload(&rec.header, &rec.payload).unwrap(), text);
        }
    }

    trait XofBytes {
        fn finalize_xof_reader_bytes(&self, n: usize) -> Vec<u8>;
    }

    impl XofBytes for blake3::Hasher {
        fn finalize_xof_reader_bytes(&self, n: usize) -> Vec<u8> {
            let mut out = vec![0u8; n];
            self.finalize_xof().fill(&mut out);
            out
        }
    }
}
