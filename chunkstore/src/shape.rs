//! A manifest checked against the file it describes, before anyone builds or stores it.
//!
//! A peer sends a manifest (or a delta on a stored one) together with the file's declared size.
//! Chunks are cut with [`ChunkParams::for_file`] of that size, so every chunk is between its
//! `min_size` and `max_size` (the last may be shorter), and the lengths add up to the size. That
//! bounds how many chunks a file of a given size can have: a few bytes of delta
//! (`Copy { start: 0, count: 1 << 20 }`, many times) can no longer make a huge manifest, because
//! the count is computed from the runs, arithmetically, and checked before anything is built.

use crate::delta::{DeltaOp, ManifestDelta};
use crate::error::{Error, Result};
use crate::manifest::{ChunkRef, MAX_MANIFEST_CHUNKS, Manifest};
use crate::params::ChunkParams;

/// The most chunks a file of `size` bytes can have when cut with `params` (already the
/// parameters for its size): all but the last are at least `min_size`, the last at least 1 byte.
pub fn max_chunks_for(params: &ChunkParams, size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    (size - 1) / u64::from(params.min_size.max(1)) + 1
}

/// Checks a full manifest against its file: at most `max_chunks` chunks (and no more than a file
/// of `size` bytes can have), each within the chunking parameters for that size, the last
/// possibly shorter, adding up to `size`.
pub fn check_manifest(
    m: &Manifest,
    store_params: &ChunkParams,
    size: u64,
    max_chunks: u64,
) -> Result<()> {
    let params = store_params.for_file(size);
    check_count(m.chunks().len() as u64, &params, size, max_chunks)?;
    check_lens(m.chunks().iter(), m.chunks().len() as u64, &params, size)
}

/// Checks that applying `delta` to `base` gives a manifest [`check_manifest`] accepts, without
/// building it: the chunk count comes from the runs' counts (with overflow checks) and is
/// checked first, then the runs against the base, then the lengths, walked in place.
pub fn check_delta(
    delta: &ManifestDelta,
    base: &Manifest,
    store_params: &ChunkParams,
    size: u64,
    max_chunks: u64,
) -> Result<()> {
    let count = delta_chunk_count(delta).ok_or_else(|| {
        Error::BadManifest(
            "the delta's chunk count overflows: send the manifest in full".to_owned(),
        )
    })?;
    let params = store_params.for_file(size);
    check_count(count, &params, size, max_chunks)?;
    let base_len = base.chunks().len() as u64;
    for op in &delta.ops {
        if let DeltaOp::Copy { start, count } = op {
            let end = u64::from(*start) + u64::from(*count);
            if end > base_len {
                return Err(Error::BadManifest(format!(
                    "delta copies chunks {start}..{end} of a base that has {base_len}: diff \
                     against the base manifest named"
                )));
            }
        }
    }
    let refs = delta.ops.iter().flat_map(|op| match op {
        DeltaOp::Copy { start, count } => {
            let (start, count) = (*start as usize, *count as usize);
            &base.chunks()[start..start + count]
        }
        DeltaOp::New(refs) => refs.as_slice(),
    });
    check_lens(refs, count, &params, size)
}

/// How many chunks applying `delta` gives, from its runs alone; `None` on overflow.
pub fn delta_chunk_count(delta: &ManifestDelta) -> Option<u64> {
    delta.ops.iter().try_fold(0u64, |n, op| {
        n.checked_add(match op {
            DeltaOp::Copy { count, .. } => u64::from(*count),
            DeltaOp::New(refs) => refs.len() as u64,
        })
    })
}

fn check_count(count: u64, params: &ChunkParams, size: u64, max_chunks: u64) -> Result<()> {
    let most = max_chunks_for(params, size);
    if count > most {
        return Err(Error::BadManifest(format!(
            "the manifest has {count} chunks, but a file of {size} bytes has at most {most} at a \
             minimum chunk size of {} bytes: chunk the file with the parameters from the handshake",
            params.min_size
        )));
    }
    let limit = max_chunks.min(MAX_MANIFEST_CHUNKS);
    if count > limit {
        return Err(Error::BadManifest(format!(
            "the manifest has {count} chunks, over the limit of {limit} per commit: a file this \
             large cannot be synced with this server"
        )));
    }
    Ok(())
}

fn check_lens<'a>(
    refs: impl Iterator<Item = &'a ChunkRef>,
    count: u64,
    params: &ChunkParams,
    size: u64,
) -> Result<()> {
    let mut total = 0u64;
    for (i, r) in refs.enumerate() {
        let last = i as u64 + 1 == count;
        let too_short = r.len == 0 || (!last && r.len < params.min_size);
        if too_short || r.len > params.max_size {
            return Err(Error::BadManifest(format!(
                "chunk {i} ({}) is {} bytes, outside {}..={} for a file of {size} bytes (only the \
                 last chunk may be shorter): chunk the file with the parameters from the handshake",
                r.id, r.len, params.min_size, params.max_size
            )));
        }
        total += u64::from(r.len);
        if total > size {
            break;
        }
    }
    if total != size {
        return Err(Error::BadManifest(format!(
            "the chunk lengths add up to {}{total} bytes, but the file declares {size}: send the \
             manifest of the file as it is",
            if total > size { "over " } else { "" }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use proptest::prelude::*;

    const P: ChunkParams = ChunkParams::LBFS;

    fn refs(lens: &[u32]) -> Manifest {
        Manifest::new(
            lens.iter()
                .enumerate()
                .map(|(i, &len)| ChunkRef {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len,
                })
                .collect(),
        )
    }

    fn err(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn an_honest_manifest_passes() {
        let m = refs(&[8192, 2048, 65536, 100]);
        check_manifest(&m, &P, m.size(), u64::MAX).unwrap();
        check_manifest(&Manifest::empty(), &P, 0, 0).unwrap();
        // One short chunk is a small file.
        check_manifest(&refs(&[1]), &P, 1, 1).unwrap();
        // A very large file's chunks are larger: 1 MiB is allowed there, not below.
        let big = ChunkParams::LARGE_FILE;
        let lens = [1u32 << 20; 4];
        let tail: Vec<u32> = std::iter::repeat_n(1 << 20, (big >> 20) as usize - 4).collect();
        let m = refs(&[&lens[..], &tail[..], &[5]].concat());
        check_manifest(&m, &P, m.size(), u64::MAX).unwrap();
        // The same 1 MiB chunks in a smaller file are outside its parameters.
        let small = refs(&lens);
        assert!(err(check_manifest(&small, &P, small.size(), u64::MAX)).contains("outside"));
    }

    #[test]
    fn a_manifest_that_does_not_fit_its_file_is_refused_with_the_reason() {
        let m = refs(&[8192, 100, 8192]);
        assert!(err(check_manifest(&m, &P, m.size(), 10)).contains("chunk 1"));
        let m = refs(&[8192, 70000]);
        assert!(err(check_manifest(&m, &P, m.size(), 10)).contains("outside 2048..=65536"));
        let m = refs(&[8192, 8192]);
        assert!(err(check_manifest(&m, &P, 8192, 10)).contains("over 16384 bytes"));
        assert!(err(check_manifest(&m, &P, 20000, 10)).contains("add up to 16384"));
        assert!(err(check_manifest(&m, &P, 16384, 1)).contains("over the limit of 1"));
        assert!(err(check_manifest(&m, &P, 2048, 10)).contains("at most 1"));
    }

    #[test]
    fn a_delta_bomb_is_refused_before_it_is_built() {
        let base = refs(&[8192; 1000]);
        let bomb = ManifestDelta {
            ops: vec![
                DeltaOp::Copy {
                    start: 0,
                    count: 1000
                };
                1 << 15
            ],
        };
        // A small file cannot have a billion chunks, however the delta is spelled.
        let e = err(check_delta(&bomb, &base, &P, 8192 * 1000, u64::MAX));
        assert!(e.contains("at most"), "{e}");
        let e = err(check_delta(&bomb, &base, &P, u64::MAX, 1 << 22));
        assert!(e.contains("over the limit"), "{e}");
        let outside = ManifestDelta {
            ops: vec![DeltaOp::Copy {
                start: 999,
                count: 2,
            }],
        };
        assert!(err(check_delta(&outside, &base, &P, 16384, 10)).contains("999..1001"));
        let fine = ManifestDelta {
            ops: vec![
                DeltaOp::Copy {
                    start: 0,
                    count: 10,
                },
                DeltaOp::New(refs(&[300]).chunks().to_vec()),
            ],
        };
        check_delta(&fine, &base, &P, 81920 + 300, 100).unwrap();
    }

    proptest! {
        /// Whatever the delta, the check accepts exactly what applying it gives when that result
        /// passes `check_manifest`, and never builds anything larger than the limit to say so.
        #[test]
        fn check_delta_agrees_with_apply_then_check(
            base in proptest::collection::vec(prop_oneof![Just(1u32), Just(2048), 2048u32..=65536, Just(70000)], 0..20),
            ops in proptest::collection::vec(
                prop_oneof![
                    (0u32..25, 0u32..25).prop_map(|(start, count)| DeltaOp::Copy { start, count }),
                    proptest::collection::vec(prop_oneof![Just(1u32), 2048u32..=65536], 0..3)
                        .prop_map(|l| DeltaOp::New(refs(&l).chunks().to_vec())),
                ],
                0..8,
            ),
            size_delta in prop_oneof![Just(0i64), Just(0), Just(1), Just(-1)],
            max in 0u64..40,
        ) {
            let base = refs(&base);
            let delta = ManifestDelta { ops };
            let applied = delta.apply(&base).ok();
            let size = applied
                .as_ref()
                .map_or(1000, |m| m.size())
                .saturating_add_signed(size_delta);
            let checked = check_delta(&delta, &base, &P, size, max);
            match applied {
                Some(m) => prop_assert_eq!(
                    checked.is_ok(),
                    check_manifest(&m, &P, size, max).is_ok()
                ),
                None => prop_assert!(checked.is_err()),
            }
        }
    }
}
