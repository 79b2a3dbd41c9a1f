//! Entry points for the fuzz targets in `fuzz/` (and the property tests that run the same checks
//! in CI): each takes arbitrary bytes, must never panic on them, and checks what holds of
//! whatever it accepts.

use std::path::PathBuf;

use crate::manifest::Manifest;

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

/// Runs `check` over the committed seed corpus of fuzz target `target` (`fuzz/corpus/TARGET`),
/// after (re)writing `seeds` into it when `LBSYNC_FUZZ_WRITE_SEEDS` is set. Panics if the corpus
/// is missing. For the crates' tests.
pub fn check_corpus(target: &str, seeds: &[Vec<u8>], check: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    if std::env::var_os("LBSYNC_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write a seed");
        }
    }
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{target}: no seed corpus at {}: {e}", dir.display()));
    let mut n = 0;
    for e in entries {
        let path = e.expect("a corpus entry").path();
        check(&std::fs::read(&path).expect("read a corpus file"));
        n += 1;
    }
    assert!(
        n >= seeds.len(),
        "{target}: the seed corpus is missing seeds"
    );
}

/// Pack record parsing, as the store reads a record back: a header, then its payload. What it
/// accepts is at most the longest manifest's bytes, and hashes to the header's id.
#[cfg(feature = "sled")]
pub fn pack_record(data: &[u8]) {
    use crate::ChunkId;
    use crate::pack::{MAX_RECORD_RAW_LEN, RECORD_HEADER_LEN, RecordHeader, decode_payload};

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

#[cfg(all(test, feature = "sled"))]
mod tests {
    use super::*;
    use crate::Chunk;
    use crate::pack::Record;
    use crate::pack::{RECORD_HEADER_LEN, RecordHeader, decode_payload};
    use proptest::prelude::*;

    fn seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let chunks: Vec<Chunk> = [
            &b"hello"[..],
            &[7u8; 5000],
            b"lbsync ".repeat(300).as_slice(),
        ]
        .into_iter()
        .map(|d| Chunk::new(d.to_vec()))
        .collect();
        let refs = |cs: &[Chunk]| Manifest::new(cs.iter().map(Chunk::chunk_ref).collect());
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
        check_corpus("manifest", &manifests, manifest);
        check_corpus("pack_record", &records, pack_record);
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
