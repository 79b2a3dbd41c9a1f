//! Manifest deltas: a new manifest described against a base one.
//!
//! A small edit in a large file changes a few chunks; sending the whole chunk list (36 bytes a
//! chunk, 470 KB for 1 GiB at 8 KiB chunks) would dwarf the edit itself. A delta is a list of
//! runs copied from the base (`Copy { start, count }`) and new chunk references, so a one-byte
//! insert costs a few hundred bytes of metadata.
//!
//! A delta describes the manifest's *encoding*: in an encrypted folder (a manifest with a
//! [`LengthMask`](crate::LengthMask)) the new refs carry masked lengths, as the manifest's
//! encoding does. So the server, which holds no mask, applies a delta to its (masked) base and
//! gets the masked manifest the client meant, byte for byte; a client applies it to its base,
//! which carries the mask, and gets the real lengths back. The wire form is the same either way.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::manifest::{ChunkRef, MAX_MANIFEST_CHUNKS, Manifest, unmask_refs};

/// One step of a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaOp {
    /// The base's chunks `start .. start + count`.
    Copy {
        /// Index of the first chunk in the base.
        start: u32,
        /// How many chunks.
        count: u32,
    },
    /// Chunks given in full, with their lengths as the manifest encodes them (masked in an
    /// encrypted folder).
    New(Vec<ChunkRef>),
}

/// A manifest expressed as operations on a base manifest.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ManifestDelta {
    /// The operations, in file order.
    pub ops: Vec<DeltaOp>,
}

impl ManifestDelta {
    /// The delta that turns `base` into `new`: maximal runs of base chunks, new chunks in between.
    /// New chunks carry their lengths as `new` encodes them (masked when `new` is); `base` and
    /// `new` are manifests of the same folder (the same mask, or none).
    pub fn diff(base: &Manifest, new: &Manifest) -> Self {
        let base_chunks = base.chunks();
        let mut first_at: HashMap<ChunkId, u32> = HashMap::with_capacity(base_chunks.len());
        for (i, c) in base_chunks.iter().enumerate().rev() {
            first_at.insert(c.id, i as u32);
        }
        let mut ops = Vec::new();
        let mut fresh: Vec<ChunkRef> = Vec::new();
        // The base index that would continue the current copy run.
        let mut next_base: Option<u32> = None;
        for c in new.chunks() {
            let continues = next_base
                .and_then(|j| base_chunks.get(j as usize).map(|b| (j, b)))
                .filter(|(_, b)| *b == c);
            if let Some((j, _)) = continues {
                if let Some(DeltaOp::Copy { count, .. }) = ops.last_mut() {
                    *count += 1;
                }
                next_base = Some(j + 1);
                continue;
            }
            match first_at
                .get(&c.id)
                .filter(|&&j| base_chunks[j as usize] == *c)
            {
                Some(&j) => {
                    if !fresh.is_empty() {
                        ops.push(DeltaOp::New(std::mem::take(&mut fresh)));
                    }
                    ops.push(DeltaOp::Copy { start: j, count: 1 });
                    next_base = Some(j + 1);
                }
                None => {
                    fresh.push(new.encoded_ref(c));
                    next_base = None;
                }
            }
        }
        if !fresh.is_empty() {
            ops.push(DeltaOp::New(fresh));
        }
        Self { ops }
    }

    /// Rebuilds the new manifest from `base`; a copy outside the base, or a result of more than
    /// [`MAX_MANIFEST_CHUNKS`] chunks, is an error. The result has the base's mask: the new refs'
    /// lengths are unmasked with it (a length that does not unmask is an error).
    pub fn apply(&self, base: &Manifest) -> Result<Manifest> {
        let total = self.ops.iter().try_fold(0u64, |n, op| {
            let more = match op {
                DeltaOp::Copy { count, .. } => u64::from(*count),
                DeltaOp::New(refs) => refs.len() as u64,
            };
            n.checked_add(more).filter(|t| *t <= MAX_MANIFEST_CHUNKS)
        });
        if total.is_none() {
            return Err(Error::BadManifest(format!(
                "the delta makes a manifest of more than {MAX_MANIFEST_CHUNKS} chunks"
            )));
        }
        let mut chunks = Vec::new();
        for op in &self.ops {
            match op {
                DeltaOp::Copy { start, count } => {
                    let (start, count) = (*start as usize, *count as usize);
                    let run = start
                        .checked_add(count)
                        .and_then(|end| base.chunks().get(start..end))
                        .ok_or_else(|| {
                            Error::BadManifest(format!(
                                "delta copies chunks {start}..{} of a base that has {}",
                                start.saturating_add(count),
                                base.chunks().len()
                            ))
                        })?;
                    chunks.extend_from_slice(run);
                }
                DeltaOp::New(refs) => {
                    if let Some(c) = refs.iter().find(|c| c.len == 0) {
                        return Err(Error::BadManifest(format!("chunk {} has length 0", c.id)));
                    }
                    match base.mask() {
                        Some(mask) => chunks.extend(unmask_refs(refs, mask)?),
                        None => chunks.extend_from_slice(refs),
                    }
                }
            }
        }
        Ok(Manifest::new(chunks).with_mask(base.mask().cloned()))
    }

    /// The new chunk references the delta carries in full (lengths as encoded: masked in an
    /// encrypted folder).
    pub fn new_refs(&self) -> impl Iterator<Item = &ChunkRef> {
        self.ops.iter().flat_map(|op| match op {
            DeltaOp::New(refs) => refs.as_slice(),
            DeltaOp::Copy { .. } => &[],
        })
    }
}

/// For each chunk of `new`, the chunks of `old` it most likely replaced (at most `max`, in file
/// order): those of the region of `old` between the unchanged chunks around it. Empty for a chunk
/// `old` already has, and for new content with nothing replaced (an append). An edited chunk sent
/// as a delta against these costs about the edit ([`crate::compress_against`]).
pub fn edit_bases(old: &Manifest, new: &Manifest, max: usize) -> Vec<Vec<ChunkId>> {
    let in_old: HashMap<ChunkId, usize> = old
        .chunks()
        .iter()
        .enumerate()
        .rev()
        .map(|(i, c)| (c.id, i))
        .collect();
    let in_new: std::collections::HashSet<ChunkId> = new.chunks().iter().map(|c| c.id).collect();
    let chunks = new.chunks();
    let mut out = vec![Vec::new(); chunks.len()];
    let mut i = 0;
    // The old index just after the last unchanged chunk seen.
    let mut gap_start = 0;
    while i < chunks.len() {
        if let Some(&j) = in_old.get(&chunks[i].id) {
            gap_start = j + 1;
            i += 1;
            continue;
        }
        // A run of new chunks, chunks[i..run_end], replacing old[gap_start..gap_end].
        let run_end = (i..chunks.len())
            .find(|&k| in_old.contains_key(&chunks[k].id))
            .unwrap_or(chunks.len());
        let gap_end = chunks
            .get(run_end)
            .and_then(|c| in_old.get(&c.id))
            .copied()
            .unwrap_or(old.chunks().len())
            .max(gap_start);
        let gap: Vec<ChunkId> = old.chunks()[gap_start.min(old.chunks().len())..gap_end]
            .iter()
            .map(|c| c.id)
            .filter(|id| !in_new.contains(id))
            .collect();
        let run = run_end - i;
        for (k, bases) in out[i..run_end].iter_mut().enumerate() {
            if gap.is_empty() || max == 0 {
                break;
            }
            // The part of the gap at the same relative place as this chunk in its run.
            let centre = k * gap.len() / run;
            let from = centre
                .saturating_sub(max / 2)
                .min(gap.len().saturating_sub(max));
            *bases = gap[from..(from + max).min(gap.len())].to_vec();
        }
        i = run_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(ids: &[u8]) -> Manifest {
        Manifest::new(
            ids.iter()
                .map(|&i| ChunkRef {
                    id: ChunkId::of(&[i]),
                    len: 100 + u32::from(i),
                })
                .collect(),
        )
    }

    #[test]
    fn small_edit_is_small() {
        let base = m(&(0..200).collect::<Vec<u8>>());
        let mut edited: Vec<u8> = (0..200).collect();
        edited[100] = 250;
        let new = m(&edited);
        let d = ManifestDelta::diff(&base, &new);
        assert_eq!(
            d.ops,
            vec![
                DeltaOp::Copy {
                    start: 0,
                    count: 100
                },
                DeltaOp::New(vec![new.chunks()[100]]),
                DeltaOp::Copy {
                    start: 101,
                    count: 99
                },
            ]
        );
        assert_eq!(d.apply(&base).unwrap(), new);
    }

    #[test]
    fn edited_chunks_are_based_on_the_chunks_they_replaced() {
        let id = |i: u8| ChunkId::of(&[i]);
        // One chunk edited in the middle: its base is the chunk it replaced.
        let bases = edit_bases(&m(&[1, 2, 3, 4]), &m(&[1, 2, 9, 4]), 4);
        assert_eq!(bases, vec![vec![], vec![], vec![id(3)], vec![]]);
        // A one-chunk file rewritten: the old chunk.
        assert_eq!(edit_bases(&m(&[1]), &m(&[2]), 4), vec![vec![id(1)]]);
        // An edit that moved a cut point: two old chunks became three new ones.
        let bases = edit_bases(&m(&[1, 2, 3, 4]), &m(&[1, 7, 8, 9, 4]), 1);
        assert_eq!(bases[1..4], [vec![id(2)], vec![id(2)], vec![id(3)]]);
        // An append replaced nothing; a chunk the new version still has is no base.
        assert_eq!(edit_bases(&m(&[1, 2]), &m(&[1, 2, 5]), 4)[2], vec![]);
        assert_eq!(
            edit_bases(&m(&[1, 2]), &m(&[2, 5]), 4),
            vec![vec![], vec![]]
        );
        // At most `max`.
        let many = edit_bases(&m(&[1, 2, 3, 4, 5, 6]), &m(&[9]), 2);
        assert_eq!(many[0].len(), 2);
        assert!(edit_bases(&m(&[]), &m(&[1]), 4)[0].is_empty());
    }

    #[test]
    fn apply_rejects_copy_outside_base() {
        let d = ManifestDelta {
            ops: vec![DeltaOp::Copy { start: 3, count: 5 }],
        };
        let err = d.apply(&m(&[1, 2, 3, 4])).unwrap_err().to_string();
        assert!(
            err.contains("copies chunks 3..8 of a base that has 4"),
            "{err}"
        );
        let overflow = ManifestDelta {
            ops: vec![DeltaOp::Copy {
                start: u32::MAX,
                count: u32::MAX,
            }],
        };
        assert!(overflow.apply(&m(&[1])).is_err());
        // Many small copies that would inflate into a huge manifest are refused up front.
        let bomb = ManifestDelta {
            ops: vec![
                DeltaOp::Copy {
                    start: 0,
                    count: 1 << 20
                };
                64
            ],
        };
        let err = bomb.apply(&m(&[1])).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn masked_delta_carries_masked_lengths_and_applies_on_both_sides() {
        let mask = crate::LengthMask::new([3; 32]);
        let base = m(&[1, 2, 3, 4]).masked(mask.clone());
        let new = m(&[1, 2, 9, 4]).masked(mask.clone());
        let d = ManifestDelta::diff(&base, &new);
        let nine = new.chunks()[2];
        assert_eq!(
            d.new_refs().copied().collect::<Vec<_>>(),
            vec![ChunkRef {
                id: nine.id,
                len: mask.apply(&nine.id, nine.len)
            }],
            "the wire carries the masked length"
        );
        assert_ne!(mask.apply(&nine.id, nine.len), nine.len);
        // The client, whose base carries the mask, gets the real lengths and the mask back.
        let applied = d.apply(&base).unwrap();
        assert_eq!(applied, new);
        assert_eq!(applied.chunks()[2], nine);
        // The server holds the base as decoded without the mask: it gets the same encoding.
        let server_base = Manifest::decode(&base.encode()).unwrap();
        let server_new = d.apply(&server_base).unwrap();
        assert_eq!(server_new.encode(), new.encode());
        assert_eq!(server_new.id(), new.id());
        // A new ref whose length does not unmask is refused by the client.
        let bad = ManifestDelta {
            ops: vec![DeltaOp::New(vec![ChunkRef {
                id: nine.id,
                len: mask.apply(&nine.id, 0),
            }])],
        };
        let err = bad.apply(&base).unwrap_err().to_string();
        assert!(
            err.contains("not written for this encrypted folder"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn masked_diff_then_apply_round_trips(
            key in any::<[u8; 32]>(),
            base in proptest::collection::vec(0u8..20, 0..40),
            new in proptest::collection::vec(0u8..20, 0..40),
        ) {
            let mask = crate::LengthMask::new(key);
            let base = m(&base).masked(mask.clone());
            let new = m(&new).masked(mask);
            let d = ManifestDelta::diff(&base, &new);
            prop_assert_eq!(d.apply(&base).unwrap(), new.clone());
            let server_base = Manifest::decode(&base.encode()).unwrap();
            prop_assert_eq!(d.apply(&server_base).unwrap().encode(), new.encode());
        }

        #[test]
        fn diff_then_apply_round_trips(
            base in proptest::collection::vec(0u8..20, 0..60),
            new in proptest::collection::vec(0u8..30, 0..60),
        ) {
            let (base, new) = (m(&base), m(&new));
            prop_assert_eq!(ManifestDelta::diff(&base, &new).apply(&base).unwrap(), new);
        }
    }
}
