//! Entry points for the fuzz targets in `fuzz/` (and the property tests that run the same checks
//! in CI): each takes arbitrary bytes, must never panic on them, and checks what holds of
//! whatever it accepts.

use crate::ChunkId;
use crate::manifest::Manifest;
use crate::pack::{MAX_RECORD_RAW_LEN, RECORD_HEADER_LEN, RecordHeader, decode_payload};

/// Manifest decoding: what decodes re-encodes to the same bytes (one manifest, one encoding, so
/// one id), and its size is the sum of its chunks.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(
            m.encode(),
            data,
            "a decoded manifest re-encodes to its bytes"
        );
        let sum: u64 = m.chunks().iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(m.size(), sum);
        assert!(m.chunks().iter().all(|c| c.len > 0));
    }
}

/// Pack record parsing, as the store reads a record back: a header, then its payload. What it
/// accepts is at most the longest manifest's bytes, and hashes to the header's id.
pub fn pack_record(data: &[u8]) {
    let Some(h) = RecordHeader::decode(data) else {
        return;
    };
    assert_eq!(&h.encode()[..], &data[..RECORD_HEADER_LEN]);
    let end = RECORD_HEADER_LEN + h.stored_len as usize;
    let Some(payload) = data.get(RECORD_HEADER_LEN..end) else {
        return;
    };
    if let Ok(raw) = decode_payload(&h, payload) {
        assert!(raw.len() as u64 <= MAX_RECORD_RAW_LEN);
        assert_eq!(raw.len(), h.raw_len as usize);
        assert_eq!(ChunkId::of(&raw), h.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::Record;
    use crate::{Chunk, ChunkRef};
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn corpus(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    fn seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let chunks: Vec<Chunk> = [
            &b"hello"[..],
            &[7u8; 5000],
            b"lbsync ".repeat(300).as_slice(),
        ]
        .into_iter()
        .map(|d| Chunk::new(d.to_vec()))
        .collect();
        let refs = |cs: &[Chunk]| {
            Manifest::new(
                cs.iter()
                    .map(|c| ChunkRef {
                        id: c.id(),
                        len: c.len() as u32,
                    })
                    .collect(),
            )
        };
        let manifests = vec![
            Manifest::empty().encode(),
            refs(&chunks[..1]).encode(),
            refs(&chunks).encode(),
        ];
        let records = chunks.iter().map(|c| Record::encode(c).to_vec()).collect();
        (manifests, records)
    }

    /// The committed seed corpus passes; `LBSYNC_FUZZ_WRITE_SEEDS=1` (re)writes it.
    #[test]
    fn seed_corpus() {
        let (manifests, records) = seeds();
        for (target, items) in [("manifest", &manifests), ("pack_record", &records)] {
            let dir = corpus(target);
            if std::env::var_os("LBSYNC_FUZZ_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                for (i, item) in items.iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), item).unwrap();
                }
            }
            let mut n = 0;
            for e in std::fs::read_dir(&dir).unwrap() {
                let data = std::fs::read(e.unwrap().path()).unwrap();
                match target {
                    "manifest" => manifest(&data),
                    _ => pack_record(&data),
                }
                n += 1;
            }
            assert!(n >= items.len(), "{target}: the seed corpus is missing");
        }
        for r in &records {
            let h = RecordHeader::decode(r).expect("a record the store wrote parses");
            assert!(decode_payload(&h, &r[RECORD_HEADER_LEN..]).is_ok());
        }
    }

    /// Flips bytes of valid encodings: mutations near the valid ones are where parsers break.
    fn mutated(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        (
            0..valid.len(),
            prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            any::<usize>(),
        )
            .prop_map(move |(i, flips, cut)| {
                let mut v = valid[i].clone();
                for (at, b) in flips {
                    if !v.is_empty() {
                        let n = v.len();
                        v[at % n] ^= b;
                    }
                }
                let keep = if cut % 4 == 0 {
                    cut % (v.len() + 1)
                } else {
                    v.len()
                };
                v.truncate(keep);
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn manifests_never_panic(data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            mutated(seeds().0),
        ]) {
            manifest(&data);
        }

        #[test]
        fn pack_records_never_panic(data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            mutated(seeds().1),
        ]) {
            pack_record(&data);
        }
    }
}
