//! Block deltas, rsync's way: the side that holds a base chunk describes it by a [`Signature`]
//! (the chunk cut into fixed blocks, each with a rolling weak sum and a short strong hash); the
//! side that holds the new chunk finds those blocks in it ([`block_delta`]) and sends "copy these
//! blocks" and "these bytes" ops, which the base's holder applies ([`apply_block_delta`]). An
//! uploading client whose file was overwritten no longer has the old bytes, but the server does:
//! the client asks their signature and sends about the edit.
//!
//! Ops (a byte string, then zstd'd on the wire), all integers ULEB128 (at most 5 bytes, u32):
//!
//! ```text
//! per base, in order:  block_size            (1 ..= MAX_BLOCK_SIZE)
//! then, to the end:    tag = n << 1 | kind
//!   kind 0, literal:   n bytes follow         (n >= 1)
//!   kind 1, copy:      start; blocks start .. start + n of the bases (n >= 1)
//! ```
//!
//! Blocks are numbered across the bases in order: base 0's blocks first (its last one may be
//! shorter), then base 1's. The result MUST be exactly `raw_len` bytes; nothing is produced past
//! it, so a few bytes of ops never make the receiver write more than the chunk.

use crate::error::{Error, Result};

/// Bytes of a block's strong hash: the first bytes of its BLAKE3. The receiver re-hashes the
/// whole rebuilt chunk, so a false match (a weak and a strong collision both) only costs a
/// refused delta and the chunk sent whole; at 6 bytes that is under one in 10^9 deltas even of
/// 1 MiB chunks, 2 bytes a block less than 8.
pub const STRONG_LEN: usize = 6;
/// The largest block size ops may name (the largest chunk).
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Block sizes chosen by [`block_size_for`] stay within these.
const MIN_CHOSEN: u32 = 64;
const MAX_CHOSEN: u32 = 16 << 10;

/// The block size for a signature of a `len`-byte chunk: about `sqrt(len × 10)`, the size at
/// which the signature (10 bytes a block) and the literal block an edit breaks cost the same,
/// which minimises their sum: 256 bytes for an 8 KiB chunk (32 blocks, 320 bytes of signature),
/// 1 KiB for 128 KiB, 4 KiB for 1 MiB. A power of two, so chunks of similar length share it.
pub fn block_size_for(len: usize) -> u32 {
    let ideal = ((len as f64) * (4 + STRONG_LEN) as f64).sqrt();
    // The power of two nearest in ratio.
    let p = ideal.max(1.0).log2().round() as u32;
    (1u32 << p.min(30)).clamp(MIN_CHOSEN, MAX_CHOSEN)
}

/// A chunk's signature: its length, block size, and per block the rolling weak sum and the first
/// [`STRONG_LEN`] bytes of the block's BLAKE3. The last block may be shorter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The chunk's length.
    pub len: u32,
    /// The block size (the last block is `len - (n - 1) × block_size` bytes).
    pub block_size: u32,
    /// Per block, [`weak_sum`].
    pub weak: Vec<u32>,
    /// Per block, the strong hash prefix.
    pub strong: Vec<[u8; STRONG_LEN]>,
}

impl Signature {
    /// The signature of `base` with [`block_size_for`] its length.
    pub fn of(base: &[u8]) -> Self {
        Self::with_block_size(base, block_size_for(base.len()))
    }

    /// The signature of `base` cut into `block_size`-byte blocks (at least 1).
    pub fn with_block_size(base: &[u8], block_size: u32) -> Self {
        let bs = block_size.max(1) as usize;
        let (weak, strong) = base.chunks(bs).map(|b| (weak_sum(b), strong(b))).unzip();
        Self {
            len: base.len() as u32,
            block_size: bs as u32,
            weak,
            strong,
        }
    }

    /// How many blocks a `len`-byte chunk has at `block_size`.
    pub fn block_count(len: u32, block_size: u32) -> usize {
        (len as usize).div_ceil(block_size.max(1) as usize)
    }

    /// Checks that the lists fit the length and block size (a signature from the network).
    pub fn check(&self) -> Result<()> {
        let n = Self::block_count(self.len, self.block_size);
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return Err(Error::BadDelta(format!(
                "a signature's block size is {}, not 1..={MAX_BLOCK_SIZE}",
                self.block_size
            )));
        }
        if self.weak.len() != n || self.strong.len() != n {
            return Err(Error::BadDelta(format!(
                "a signature of {} bytes in blocks of {} has {} weak and {} strong sums, not {n}",
                self.len,
                self.block_size,
                self.weak.len(),
                self.strong.len()
            )));
        }
        Ok(())
    }

    fn block_len(&self, i: usize) -> usize {
        let bs = self.block_size as usize;
        bs.min(self.len as usize - i * bs)
    }
}

/// rsync's rolling checksum of a block: `a = Σ x_i`, `b = Σ (n - i) x_i` (bytes as unsigned,
/// `i` from 0, both mod 2^16), as `a | b << 16`.
pub fn weak_sum(block: &[u8]) -> u32 {
    let (a, b) = sums(block);
    pack(a, b)
}

fn sums(block: &[u8]) -> (u32, u32) {
    let n = block.len() as u32;
    let mut a = 0u32;
    let mut b = 0u32;
    for (i, &x) in block.iter().enumerate() {
        a = a.wrapping_add(u32::from(x));
        b = b.wrapping_add((n - i as u32).wrapping_mul(u32::from(x)));
    }
    (a, b)
}

fn pack(a: u32, b: u32) -> u32 {
    (a & 0xffff) | (b << 16)
}

fn strong(block: &[u8]) -> [u8; STRONG_LEN] {
    let mut out = [0u8; STRONG_LEN];
    out.copy_from_slice(&blake3::hash(block).as_bytes()[..STRONG_LEN]);
    out
}

fn push_uleb(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A ULEB128 u32 at `ops[*at..]`, advancing `at`; at most 5 bytes, no bits past 32.
fn take_uleb(ops: &[u8], at: &mut usize) -> Result<u32> {
    let mut v = 0u64;
    for k in 0..5 {
        let Some(&byte) = ops.get(*at) else {
            return Err(Error::BadDelta("the ops end inside a number".into()));
        };
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * k);
        if byte & 0x80 == 0 {
            return u32::try_from(v)
                .map_err(|_| Error::BadDelta("a number in the ops is over 32 bits".into()));
        }
    }
    Err(Error::BadDelta(
        "a number in the ops is longer than 5 bytes".into(),
    ))
}

/// One window length of the search: the blocks of exactly that length, by weak sum.
struct Window {
    len: usize,
    blocks: std::collections::HashMap<u32, Vec<u32>>,
    a: u32,
    b: u32,
}

/// The ops that rebuild `new` from the chunks `bases` describe (in order; see the module docs):
/// every block of theirs found in `new` (weak sum, then strong hash) is copied, the rest is
/// literal. The caller compares the ops' (zstd'd) size with sending `new` whole.
pub fn block_delta(new: &[u8], bases: &[Signature]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for s in bases {
        push_uleb(&mut out, s.block_size);
    }
    // Global block numbers, and the windows: one per distinct block length (the full size of
    // each base and its shorter last block).
    let mut strong_of: Vec<[u8; STRONG_LEN]> = Vec::new();
    let mut windows: Vec<Window> = Vec::new();
    for s in bases {
        if s.check().is_err() {
            // Not usable: its blocks count (the numbering) but none is searched for.
            let n = Signature::block_count(s.len, s.block_size.max(1));
            strong_of.extend(std::iter::repeat_n([0u8; STRONG_LEN], n));
            continue;
        }
        for i in 0..s.weak.len() {
            let len = s.block_len(i);
            let g = strong_of.len() as u32;
            strong_of.push(s.strong[i]);
            let w = match windows.iter_mut().position(|w| w.len == len) {
                Some(k) => &mut windows[k],
                None => {
                    windows.push(Window {
                        len,
                        blocks: Default::default(),
                        a: 0,
                        b: 0,
                    });
                    windows.last_mut().expect("just pushed")
                }
            };
            w.blocks.entry(s.weak[i]).or_default().push(g);
        }
    }
    // Longer windows first: a match covers more.
    windows.sort_by_key(|w| std::cmp::Reverse(w.len));
    let n = new.len();
    let reset = |windows: &mut [Window], p: usize| {
        for w in windows.iter_mut() {
            if p + w.len <= n {
                (w.a, w.b) = sums(&new[p..p + w.len]);
            }
        }
    };
    reset(&mut windows, 0);
    let mut p = 0;
    let mut literal_from = 0;
    // The copy run being built: (first block, count).
    let mut run: Option<(u32, u32)> = None;
    let flush_literal = |out: &mut Vec<u8>, from: usize, to: usize| {
        if to > from {
            push_uleb(out, ((to - from) as u32) << 1);
            out.extend_from_slice(&new[from..to]);
        }
    };
    let flush_run = |out: &mut Vec<u8>, run: &mut Option<(u32, u32)>| {
        if let Some((start, count)) = run.take() {
            push_uleb(out, (count << 1) | 1);
            push_uleb(out, start);
        }
    };
    while p < n {
        let mut found: Option<(u32, usize)> = None;
        for w in &windows {
            if p + w.len > n {
                continue;
            }
            let Some(cands) = w.blocks.get(&pack(w.a, w.b)) else {
                continue;
            };
            let h = strong(&new[p..p + w.len]);
            // The block continuing the current run first, so runs stay whole.
            let next = run.map(|(s, c)| s + c);
            let hit = cands
                .iter()
                .copied()
                .filter(|&g| strong_of[g as usize] == h)
                .min_by_key(|&g| Some(g) != next);
            if let Some(g) = hit {
                found = Some((g, w.len));
                break;
            }
        }
        match found {
            Some((g, len)) => {
                flush_literal(&mut out, literal_from, p);
                match &mut run {
                    Some((s, c)) if *s + *c == g && *c < u32::MAX >> 1 => *c += 1,
                    _ => {
                        flush_run(&mut out, &mut run);
                        run = Some((g, 1));
                    }
                }
                p += len;
                literal_from = p;
                reset(&mut windows, p);
            }
            None => {
                if literal_from == p {
                    flush_run(&mut out, &mut run);
                }
                for w in windows.iter_mut() {
                    if p + w.len < n {
                        let (x, y) = (u32::from(new[p]), u32::from(new[p + w.len]));
                        w.a = w.a.wrapping_sub(x).wrapping_add(y);
                        w.b =
                            w.b.wrapping_sub((w.len as u32).wrapping_mul(x))
                                .wrapping_add(w.a);
                    }
                }
                p += 1;
                // Literal runs stay well within u32 tags.
                if p - literal_from == (u32::MAX >> 2) as usize {
                    flush_literal(&mut out, literal_from, p);
                    literal_from = p;
                }
            }
        }
    }
    flush_literal(&mut out, literal_from, n);
    flush_run(&mut out, &mut run);
    out
}

/// The most bytes the ops of a `raw_len`-byte chunk may take (before zstd): its bytes as
/// literals plus room for ops every few bytes. The receiver decompresses no more than this; an
/// encoder whose ops are longer sends the chunk another way.
pub fn max_ops_len(raw_len: usize, bases: usize) -> usize {
    2 * raw_len + 5 * bases + 64
}

/// Rebuilds a chunk from `ops` ([`block_delta`]'s) and the bytes of the bases they were made
/// against, in order: exactly `raw_len` bytes or an error saying what was wrong (an unknown
/// block, an op past `raw_len`, a short result, trailing garbage). Never produces more than
/// `raw_len` bytes, whatever the ops say.
pub fn apply_block_delta(ops: &[u8], bases: &[&[u8]], raw_len: usize) -> Result<Vec<u8>> {
    let bad = |why: String| Err(Error::BadDelta(why));
    let mut at = 0;
    // (base, block size, first global block number) per base.
    let mut first = Vec::with_capacity(bases.len());
    let mut total = 0usize;
    for (k, b) in bases.iter().enumerate() {
        let bs = take_uleb(ops, &mut at)?;
        if bs == 0 || bs > MAX_BLOCK_SIZE {
            return bad(format!(
                "base {k}'s block size is {bs}, not 1..={MAX_BLOCK_SIZE}"
            ));
        }
        first.push((b, bs as usize, total));
        total += b.len().div_ceil(bs as usize);
    }
    let mut out = Vec::with_capacity(raw_len);
    while at < ops.len() {
        let tag = take_uleb(ops, &mut at)?;
        let n = (tag >> 1) as usize;
        if n == 0 {
            return bad("an op of length 0".into());
        }
        if tag & 1 == 0 {
            let Some(lit) = ops.get(at..at + n) else {
                return bad(format!(
                    "a literal of {n} bytes where {} are left",
                    ops.len() - at
                ));
            };
            if out.len() + n > raw_len {
                return bad(format!(
                    "the ops make more than the declared {raw_len} bytes"
                ));
            }
            out.extend_from_slice(lit);
            at += n;
        } else {
            let start = take_uleb(ops, &mut at)? as usize;
            if start.checked_add(n).is_none_or(|end| end > total) {
                return bad(format!(
                    "a copy of blocks {start}..{} where the bases have {total}",
                    start.saturating_add(n)
                ));
            }
            for g in start..start + n {
                // The base holding global block g: the last whose first block is at most g.
                let k = first.partition_point(|&(_, _, f)| f <= g) - 1;
                let (b, bs, f) = first[k];
                let from = (g - f) * bs;
                let block = &b[from..(from + bs).min(b.len())];
                if out.len() + block.len() > raw_len {
                    return bad(format!(
                        "the ops make more than the declared {raw_len} bytes"
                    ));
                }
                out.extend_from_slice(block);
            }
        }
    }
    if out.len() != raw_len {
        return bad(format!(
            "the ops make {} bytes where {raw_len} were declared",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn round_trip(new: &[u8], bases: &[&[u8]]) -> Vec<u8> {
        let sigs: Vec<Signature> = bases.iter().map(|b| Signature::of(b)).collect();
        let ops = block_delta(new, &sigs);
        assert_eq!(apply_block_delta(&ops, bases, new.len()).unwrap(), new);
        ops
    }

    #[test]
    fn the_rolling_sum_rolls() {
        let data = noise(2000, 3);
        let w = 300;
        let (mut a, mut b) = sums(&data[..w]);
        for p in 0..data.len() - w {
            let (x, y) = (u32::from(data[p]), u32::from(data[p + w]));
            a = a.wrapping_sub(x).wrapping_add(y);
            b = b.wrapping_sub((w as u32).wrapping_mul(x)).wrapping_add(a);
            assert_eq!(pack(a, b), weak_sum(&data[p + 1..p + 1 + w]), "at {p}");
        }
    }

    #[test]
    fn block_sizes_follow_the_square_root_and_stay_in_bounds() {
        assert_eq!(block_size_for(8192), 256);
        assert_eq!(block_size_for(131_072), 1024);
        assert_eq!(block_size_for(1 << 20), 4096);
        assert_eq!(block_size_for(1), MIN_CHOSEN);
        assert_eq!(block_size_for(1 << 30), MAX_CHOSEN);
    }

    #[test]
    fn a_one_byte_insert_costs_about_one_block() {
        let base = noise(8192, 1);
        let mut new = base.clone();
        new.insert(4100, b'!');
        let ops = round_trip(&new, &[&base]);
        let bs = block_size_for(base.len()) as usize;
        assert!(ops.len() < bs + 20, "{} bytes of ops", ops.len());
        // Prepend and overwrite, too.
        let mut pre = noise(100, 9);
        pre.extend_from_slice(&base);
        assert!(round_trip(&pre, &[&base]).len() < 100 + 20);
        let mut over = base.clone();
        over[1000..1000 + 1024].copy_from_slice(&noise(1024, 5));
        assert!(round_trip(&over, &[&base]).len() < 1024 + 2 * bs + 20);
    }

    #[test]
    fn several_bases_and_their_short_last_blocks_are_found() {
        let (b0, b1) = (noise(5000, 1), noise(3001, 2));
        let mut new = b1[..3000].to_vec();
        new.extend_from_slice(&b0);
        new.extend_from_slice(&b1);
        let ops = round_trip(&new, &[&b0, &b1]);
        assert!(ops.len() < 300, "{} bytes of ops", ops.len());
    }

    #[test]
    fn nothing_in_common_is_all_literal_and_empty_is_fine() {
        let base = noise(4096, 1);
        let new = noise(4096, 2);
        let ops = round_trip(&new, &[&base]);
        assert!(ops.len() <= new.len() + 10);
        round_trip(&[], &[&base]);
        round_trip(&new, &[]);
        round_trip(&new, &[&[]]);
    }

    #[test]
    fn malformed_ops_are_refused() {
        let base = noise(1024, 1);
        let sig = Signature::with_block_size(&base, 256);
        let ops = block_delta(&base, &[sig]);
        let ok = apply_block_delta(&ops, &[&base], 1024).unwrap();
        assert_eq!(ok, base);
        let err = |ops: &[u8], raw_len: usize| {
            apply_block_delta(ops, &[&base], raw_len)
                .unwrap_err()
                .to_string()
        };
        // Block size 256 (0x80 0x02), then the ops.
        let e = err(&[0x80, 0x02, 0b11, 4], 256);
        assert!(e.contains("blocks 4..5 where the bases have 4"), "{e}");
        let e = err(&[0x80, 0x02, 0b1001, 0], 512);
        assert!(e.contains("more than the declared 512"), "{e}");
        let e = err(&[0x80, 0x02, 0b11, 0], 512);
        assert!(e.contains("make 256 bytes where 512"), "{e}");
        let e = err(&[0x80, 0x02, 10 << 1, 1, 2], 10);
        assert!(e.contains("a literal of 10 bytes where 2"), "{e}");
        let e = err(&[0x80, 0x02, 0b01, 0], 10);
        assert!(e.contains("length 0"), "{e}");
        let e = err(&[0x00], 10);
        assert!(e.contains("block size is 0"), "{e}");
        let e = err(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], 10);
        assert!(e.contains("longer than 5 bytes"), "{e}");
        let e = err(&[0x80, 0x80, 0x80, 0x80, 0x7f], 10);
        assert!(e.contains("over 32 bits"), "{e}");
        let e = err(&[0x80], 10);
        assert!(e.contains("inside a number"), "{e}");
        // A copy with a huge count does not loop or allocate: it is refused from the count.
        let e = err(&[0x80, 0x02, 0xff, 0xff, 0xff, 0xff, 0x0f, 0], 10);
        assert!(e.contains("where the bases have 4"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn apply_inverts_the_delta_for_random_edits(
            len in 0usize..20_000,
            seed in any::<u64>(),
            edits in proptest::collection::vec((any::<u16>(), 0usize..600, 0usize..600, any::<u64>()), 0..5),
            block in proptest::option::of(1u32..2048),
        ) {
            let base = noise(len, seed);
            let mut new = base.clone();
            for (at, del, ins, s) in edits {
                let at = (at as usize) % (new.len() + 1);
                let del = del.min(new.len() - at);
                new.splice(at..at + del, noise(ins, s));
            }
            let sig = match block {
                Some(b) => Signature::with_block_size(&base, b),
                None => Signature::of(&base),
            };
            let ops = block_delta(&new, std::slice::from_ref(&sig));
            prop_assert!(ops.len() <= max_ops_len(new.len(), 1));
            prop_assert_eq!(apply_block_delta(&ops, &[&base], new.len()).unwrap(), new);
        }

        #[test]
        fn garbage_ops_never_make_more_than_declared_nor_panic(
            ops in proptest::collection::vec(any::<u8>(), 0..200),
            raw_len in 0usize..5000,
        ) {
            let base = noise(3000, 7);
            if let Ok(out) = apply_block_delta(&ops, &[&base, &base[..100]], raw_len) {
                prop_assert_eq!(out.len(), raw_len);
            }
        }

        #[test]
        fn flipped_ops_are_refused_or_give_other_bytes_of_the_right_length(
            seed in any::<u64>(),
            flip in any::<usize>(),
            bit in 0u8..8,
        ) {
            let base = noise(6000, seed);
            let mut new = base.clone();
            new.insert(3000, 1);
            let ops = block_delta(&new, &[Signature::of(&base)]);
            let mut bad = ops.clone();
            let i = flip % bad.len();
            bad[i] ^= 1 << bit;
            if let Ok(out) = apply_block_delta(&bad, &[&base], new.len()) {
                prop_assert_eq!(out.len(), new.len());
            }
        }
    }
}
