//! Entry points for the fuzz targets in `fuzz/` (and the property tests that run the same checks
//! in CI): each takes arbitrary bytes, must never panic on them, and checks what holds of
//! whatever it accepts.

use std::path::Path;

use prost::Message;

use crate::{CommitRequest, SyncPath, pb};

/// Path validation: an accepted path is relative, has no empty, `.` or `..` component and no
/// NUL, and under any root names something strictly inside that root, which maps back to it.
pub fn sync_path(data: &[u8]) {
    let Ok(p) = SyncPath::from_bytes(data) else {
        return;
    };
    let s = p.as_str();
    assert!(!s.is_empty() && !s.starts_with('/') && !s.contains('\0'));
    assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    let root = Path::new("/srv/folder");
    let local = p.to_local(root);
    assert!(
        local.starts_with(root) && local != root,
        "{local:?} escapes"
    );
    assert_eq!(SyncPath::from_local(root, &local).ok(), Some(p));
}

/// A commit as it arrives on the wire: protobuf decoding, then the conversion to the domain
/// type, which validates every field. Accepted requests carry only valid paths and device names.
/// Their content, checked against the declared size as the server checks it, passes only when
/// it fits the file; a delta (applied to a small fixed base) is judged as its result would be,
/// without being built.
pub fn commit_request(data: &[u8]) {
    use lbsync_chunkstore::{ChunkParams, check_delta, check_manifest, max_chunks_for};
    let Ok(msg) = pb::CommitRequest::decode(data) else {
        return;
    };
    let Ok(req) = CommitRequest::try_from(msg) else {
        return;
    };
    sync_path(req.entry.path.as_str().as_bytes());
    assert!(crate::check_device(&req.entry.device).is_ok());
    let (p, size, max) = (ChunkParams::DEFAULT, req.entry.size, 1 << 12);
    match req.content {
        Some(crate::Content::Full(m)) if check_manifest(&m, &p, size, max).is_ok() => {
            assert_eq!(m.size(), size);
            assert!(m.chunks().len() as u64 <= max_chunks_for(&p.for_file(size), size));
        }
        Some(crate::Content::Delta { delta, .. }) => {
            let base = fuzz_base_manifest();
            if check_delta(&delta, &base, &p, size, max).is_ok() {
                let built = delta.apply(&base).expect("a checked delta applies");
                assert!(check_manifest(&built, &p, size, max).is_ok());
            }
        }
        _ => {}
    }
}

/// The base every fuzzed delta is applied to: four chunks within the default parameters.
fn fuzz_base_manifest() -> lbsync_chunkstore::Manifest {
    lbsync_chunkstore::Manifest::new(
        [2048u32, 8192, 65536, 100]
            .iter()
            .enumerate()
            .map(|(i, &len)| lbsync_chunkstore::ChunkRef {
                id: lbsync_chunkstore::ChunkId::of(&[i as u8]),
                len,
            })
            .collect(),
    )
}

/// The base every [`chunk_data`] delta is decoded against.
pub const FUZZ_BASE: &[u8] = b"fn main() { println!(\"lbsync keeps folders in sync\"); }\n";

/// A chunk as it arrives on the wire, plain or a delta against [`FUZZ_BASE`]: never more than
/// the limit is inflated, and an accepted chunk is what its id says.
pub fn chunk_data(data: &[u8]) {
    let Ok(msg) = pb::ChunkData::decode(data) else {
        return;
    };
    if crate::wire::chunk_bases(&msg).is_err() {
        return;
    }
    if let Ok(chunk) = crate::wire::decode_chunk_against(msg, 1 << 16, Some(FUZZ_BASE)) {
        assert!(chunk.len() <= 1 << 16);
        assert_eq!(lbsync_chunkstore::ChunkId::of(chunk.data()), chunk.id());
    }
}

/// The base every [`block_delta`] chunk is rebuilt on: 150 distinct lines, about 6 KB.
pub fn fuzz_block_base() -> Vec<u8> {
    (0..150)
        .flat_map(|i| format!("line {i}: lbsync keeps folders in sync\n").into_bytes())
        .collect()
}

/// A block delta (`COMPRESSION_BLOCK_DELTA`) as it arrives on the wire, rebuilt on
/// [`fuzz_block_base`] once per base it names: never more than the limit is inflated or built,
/// and an accepted chunk is what its id says.
pub fn block_delta(data: &[u8]) {
    let Ok(msg) = pb::ChunkData::decode(data) else {
        return;
    };
    let Ok(base_ids) = crate::wire::chunk_bases(&msg) else {
        return;
    };
    let base = fuzz_block_base();
    let bases = vec![base.as_slice(); base_ids.len()];
    if let Ok(chunk) = crate::wire::decode_block_delta(msg, 1 << 16, &bases) {
        assert!(chunk.len() <= 1 << 16);
        assert_eq!(lbsync_chunkstore::ChunkId::of(chunk.data()), chunk.id());
    }
}

/// A batch of commits as it arrives on the wire: accepted batches are within the limit and
/// carry only valid paths, each with the batch's folder.
pub fn commit_batch(data: &[u8]) {
    let Ok(msg) = pb::CommitBatchRequest::decode(data) else {
        return;
    };
    let folder = msg.folder.clone();
    if let Ok(reqs) = crate::convert::batch_from_pb(msg) {
        assert!(reqs.len() <= crate::convert::MAX_BATCH_COMMITS);
        for r in reqs {
            assert_eq!(r.folder, folder);
            sync_path(r.entry.path.as_str().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Seeds = (
        Vec<Vec<u8>>,
        Vec<Vec<u8>>,
        Vec<Vec<u8>>,
        Vec<Vec<u8>>,
        Vec<Vec<u8>>,
    );

    fn seeds() -> Seeds {
        let paths: Vec<Vec<u8>> = [
            "notes.txt",
            "a/b/c.txt",
            "../x",
            "/abs",
            "a//b",
            "a/./b",
            ".hidden",
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let m = lbsync_chunkstore::Manifest::new(vec![lbsync_chunkstore::ChunkRef {
            id: lbsync_chunkstore::ChunkId::of(b"x"),
            len: 1,
        }]);
        let req = CommitRequest {
            folder: "default".into(),
            entry: crate::Entry::file(SyncPath::new("docs/a.txt").unwrap(), &m, "laptop#1"),
            base_version: 3,
            content: Some(crate::Content::Full(m.clone())),
        };
        let known = CommitRequest {
            content: Some(crate::Content::Known(m.id())),
            ..req.clone()
        };
        let batch =
            crate::convert::batch_to_pb("default", "laptop#1", vec![req.clone(), known.clone()]);
        let commits = [req, known]
            .into_iter()
            .map(|r| pb::CommitRequest::from(r).encode_to_vec())
            .collect();
        let mut edited = FUZZ_BASE.to_vec();
        edited.splice(10..10, *b" // edited");
        let chunks = [
            crate::wire::encode_chunk_against(
                lbsync_chunkstore::ChunkId::of(&edited),
                &edited.into(),
                &[lbsync_chunkstore::ChunkId::of(FUZZ_BASE)],
                FUZZ_BASE,
            ),
            crate::wire::encode_chunk(
                lbsync_chunkstore::ChunkId::of(FUZZ_BASE),
                &bytes::Bytes::from_static(FUZZ_BASE),
            ),
        ]
        .iter()
        .map(Message::encode_to_vec)
        .collect();
        let base = fuzz_block_base();
        let base_id = lbsync_chunkstore::ChunkId::of(&base);
        let sig = lbsync_chunkstore::Signature::of(&base);
        let block_deltas = [(2000, 2000), (0, 0), (5000, 5200)]
            .iter()
            .map(|&(from, to)| {
                let mut new = base.clone();
                new.splice(from..to, *b"an edit of a few bytes");
                let id = lbsync_chunkstore::ChunkId::of(&new);
                crate::wire::encode_block_delta(
                    id,
                    &new,
                    &[base_id],
                    std::slice::from_ref(&sig),
                    new.len(),
                )
                .expect("a small edit goes as a block delta")
                .encode_to_vec()
            })
            .collect();
        (
            paths,
            commits,
            vec![batch.encode_to_vec()],
            chunks,
            block_deltas,
        )
    }

    /// The committed seed corpus passes; `LBSYNC_FUZZ_WRITE_SEEDS=1` (re)writes it.
    #[test]
    fn seed_corpus() {
        let (paths, commits, batches, chunks, block_deltas) = seeds();
        lbsync_chunkstore::fuzzing::check_corpus("sync_path", &paths, sync_path);
        lbsync_chunkstore::fuzzing::check_corpus("commit_request", &commits, commit_request);
        lbsync_chunkstore::fuzzing::check_corpus("commit_batch", &batches, commit_batch);
        lbsync_chunkstore::fuzzing::check_corpus("chunk_data", &chunks, chunk_data);
        lbsync_chunkstore::fuzzing::check_corpus("block_delta", &block_deltas, block_delta);
    }

    #[test]
    fn the_block_delta_seeds_decode() {
        let base = fuzz_block_base();
        for seed in seeds().4 {
            let msg = pb::ChunkData::decode(seed.as_slice()).unwrap();
            assert!(crate::wire::decode_block_delta(msg, 1 << 16, &[&base]).is_ok());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn paths_never_panic_or_escape(data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "[a./\\x00]{0,12}".prop_map(String::into_bytes),
        ]) {
            sync_path(&data);
        }

        #[test]
        fn commit_requests_never_panic(data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (0..2usize, prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)).prop_map(|(i, flips)| {
                let mut v = seeds().1[i].clone();
                for (at, b) in flips {
                    let n = v.len();
                    v[at % n] ^= b;
                }
                v
            }),
        ]) {
            commit_request(&data);
        }

        #[test]
        fn batches_and_chunks_never_panic(
            which in 0..5usize,
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        ) {
            let (_, _, batches, chunks, block_deltas) = seeds();
            let mut v = [&batches[0], &chunks[0], &chunks[1], &block_deltas[0], &block_deltas[2]]
                [which]
                .clone();
            for (at, b) in flips {
                let n = v.len();
                v[at % n] ^= b;
            }
            commit_batch(&v);
            chunk_data(&v);
            block_delta(&v);
        }
    }
}
