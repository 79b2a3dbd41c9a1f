//! Content-defined chunking with FastCDC v2020, reading large blocks and cutting on the slice.
//!
//! [`Cutter`] reads `BLOCK_SIZE` blocks into one buffer and cuts them with `fastcdc::v2020::FastCDC`;
//! chunks are zero-copy [`Bytes`] slices of the block. Only the unfinished tail of a block (under
//! `max_size` bytes) is copied, to the front of the next one. A cut depends only on the bytes from the
//! chunk's start, so restarting the cutter at a chunk boundary yields the same cut points as one pass
//! over the whole input: the result does not depend on the block size or on how `read` splits its data.
//!
//! [`Chunker`] also hashes, on the calling thread. [`chunk_pipelined`] cuts on a second thread and
//! hashes on the calling one, which is faster on two or more cores.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc;

use bytes::Bytes;
use fastcdc::v2020::FastCDC;

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::params::ChunkParams;

/// FastCDC's normalized chunking level 2: chunk sizes gather around the average (level 1 leaves a
/// long tail of large chunks, and a small edit that lands in one costs its whole size on the
/// wire). Part of the format, like the pinned crate version.
pub const NORMALIZATION: fastcdc::v2020::Normalization = fastcdc::v2020::Normalization::Level2;

/// How much is read from a file at once.
pub const BLOCK_SIZE: usize = 4 << 20;

/// A cut but not yet hashed piece of the input.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Where it starts in the input.
    pub offset: u64,
    /// Its bytes.
    pub data: Bytes,
}

/// Cuts a byte stream into content-defined pieces without hashing them.
pub struct Cutter<R> {
    reader: R,
    params: ChunkParams,
    block_size: usize,
    carry: Vec<u8>,
    offset: u64,
    eof: bool,
}

impl<R: Read> Cutter<R> {
    /// A cutter reading [`BLOCK_SIZE`] blocks.
    pub fn new(reader: R, params: ChunkParams) -> Self {
        Self::with_block_size(reader, params, BLOCK_SIZE)
    }

    /// A cutter reading blocks of `block_size` bytes (raised to more than `params.max_size`).
    pub fn with_block_size(reader: R, params: ChunkParams, block_size: usize) -> Self {
        Self {
            reader,
            params,
            block_size: block_size.max(2 * params.max_size as usize),
            carry: Vec::new(),
            offset: 0,
            eof: false,
        }
    }

    /// The pieces of the next block, or `None` at the end of the input.
    pub fn next_block(&mut self) -> io::Result<Option<Vec<Piece>>> {
        if self.eof {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(self.block_size);
        buf.append(&mut self.carry);
        // `read_to_end` reads into the spare capacity without zeroing it first (a memset of
        // every byte read, otherwise); fewer bytes than asked for means the input ended.
        let want = self.block_size - buf.len();
        match (&mut self.reader).take(want as u64).read_to_end(&mut buf) {
            Ok(n) if n < want => self.eof = true,
            Ok(_) => {}
            Err(e) => {
                self.eof = true;
                return Err(e);
            }
        }
        let block = Bytes::from(buf);
        let p = self.params;
        let mut pieces = Vec::with_capacity(block.len() / p.avg_size as usize + 1);
        let cdc = FastCDC::with_level(
            &block,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            NORMALIZATION,
        );
        for c in cdc {
            let end = c.offset + c.length;
            if end == block.len() && !self.eof {
                // The cut at the block's end is only where the data stopped: carry it over.
                self.carry.extend_from_slice(&block[c.offset..]);
                break;
            }
            pieces.push(Piece {
                offset: self.offset,
                data: block.slice(c.offset..end),
            });
            self.offset += c.length as u64;
        }
        if pieces.is_empty() && self.eof {
            return Ok(None);
        }
        Ok(Some(pieces))
    }
}

/// Cuts and hashes a byte stream: an iterator of `(offset, Chunk)` in input order.
pub struct Chunker<R> {
    cutter: Cutter<R>,
    ready: VecDeque<Piece>,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader` with the given parameters.
    pub fn new(reader: R, params: ChunkParams) -> Self {
        Self::from_cutter(Cutter::new(reader, params))
    }

    /// A chunker over an existing cutter (e.g. one with another block size).
    pub fn from_cutter(cutter: Cutter<R>) -> Self {
        Self {
            cutter,
            ready: VecDeque::new(),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<(u64, Chunk)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Some(Ok((p.offset, Chunk::new(p.data))));
            }
            match self.cutter.next_block() {
                Ok(Some(pieces)) => self.ready.extend(pieces),
                Ok(None) => return None,
                Err(e) => return Some(Err(Error::io("reading input to chunk")(e))),
            }
        }
    }
}

/// Chunks `reader` with cutting on a second thread and hashing on this one, calling `f` with each
/// `(offset, chunk)` in input order. Memory stays bounded: at most a few blocks are in flight. If `f`
/// fails, reading stops and its error is returned.
pub fn chunk_pipelined<R, E>(
    reader: R,
    params: ChunkParams,
    mut f: impl FnMut(u64, Chunk) -> Result<(), E>,
) -> Result<(), E>
where
    R: Read + Send,
    E: From<Error>,
{
    cut_pipelined(reader, params, |p| f(p.offset, Chunk::new(p.data)))
}

/// Cuts `reader` on a second thread, calling `f` on this one with each piece, unhashed, in input
/// order: for callers that name chunks by something other than the BLAKE3 of their bytes (an
/// encrypted folder names a chunk by its sealed bytes), or hash them elsewhere. Memory stays
/// bounded as in [`chunk_pipelined`]; if `f` fails, reading stops and its error is returned.
pub fn cut_pipelined<R, E>(
    reader: R,
    params: ChunkParams,
    mut f: impl FnMut(Piece) -> Result<(), E>,
) -> Result<(), E>
where
    R: Read + Send,
    E: From<Error>,
{
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<Piece>>>(2);
        s.spawn(move || {
            let mut cutter = Cutter::new(reader, params);
            loop {
                let block = cutter.next_block().transpose();
                let Some(block) = block else { break };
                let failed = block.is_err();
                if tx.send(block).is_err() || failed {
                    break;
                }
            }
        });
        for block in rx {
            for p in block.map_err(Error::io("reading input to chunk"))? {
                f(p)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn seeded(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    /// Hands out at most `step` bytes per `read` call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn cuts(data: &[u8], params: ChunkParams, block: usize, step: usize) -> Vec<(u64, Chunk)> {
        let cutter = Cutter::with_block_size(Trickle { data, step }, params, block);
        Chunker::from_cutter(cutter).map(|r| r.unwrap()).collect()
    }

    /// Pins the cut points and ids of a seeded input: a change here changes the format.
    #[test]
    fn golden_cut_points() {
        let data = seeded(256 << 10, 0x1b5_f00d);
        let got: Vec<(u64, usize)> = cuts(&data, ChunkParams::LBFS, BLOCK_SIZE, 1 << 20)
            .iter()
            .map(|(o, c)| (*o, c.len()))
            .collect();
        let expected: Vec<(u64, usize)> = GOLDEN_LBFS.to_vec();
        assert_eq!(got, expected);
        let ids: Vec<String> = cuts(&data, ChunkParams::LBFS, BLOCK_SIZE, 1 << 20)
            .iter()
            .take(2)
            .map(|(_, c)| c.id().to_string())
            .collect();
        assert_eq!(ids, GOLDEN_LBFS_FIRST_IDS);
    }

    const GOLDEN_LBFS: &[(u64, usize)] = &[
        (0, 10616),
        (10616, 10252),
        (20868, 10064),
        (30932, 9194),
        (40126, 2723),
        (42849, 8448),
        (51297, 9781),
        (61078, 8904),
        (69982, 8858),
        (78840, 10253),
        (89093, 9288),
        (98381, 6702),
        (105083, 9415),
        (114498, 9676),
        (124174, 5570),
        (129744, 8967),
        (138711, 14633),
        (153344, 6398),
        (159742, 3764),
        (163506, 7186),
        (170692, 9566),
        (180258, 5304),
        (185562, 9112),
        (194674, 11661),
        (206335, 18359),
        (224694, 6071),
        (230765, 9972),
        (240737, 8509),
        (249246, 12898),
    ];
    const GOLDEN_LBFS_FIRST_IDS: [&str; 2] = [
        "7df51a1d3c5da657d60e945c085251dd18011ff0eee2d4d196df959af21dc72b",
        "21e99a74f3dc1f28706700e8cdd1712dbc73ed492cfa2106dea19328e465fbde",
    ];

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(cuts(&[], ChunkParams::LBFS, BLOCK_SIZE, 100).is_empty());
    }

    #[test]
    fn pipelined_equals_single_threaded() {
        let data = seeded(3 << 20, 7);
        let single = cuts(&data, ChunkParams::LBFS, 1 << 20, 1 << 20);
        let mut piped = Vec::new();
        chunk_pipelined::<_, Error>(&data[..], ChunkParams::LBFS, |o, c| {
            piped.push((o, c));
            Ok(())
        })
        .unwrap();
        assert_eq!(single, piped);
    }

    #[test]
    fn pipelined_stops_on_callback_error() {
        let data = seeded(1 << 20, 8);
        let mut seen = 0;
        let err = chunk_pipelined(&data[..], ChunkParams::LBFS, |_, _| {
            seen += 1;
            Err(Error::BadManifest("stop".into()))
        })
        .unwrap_err();
        assert_eq!(seen, 1);
        assert!(matches!(err, Error::BadManifest(_)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Chunks concatenate to the input, respect the size limits, and do not depend on the block
        /// size or on how the reader splits its data.
        #[test]
        fn chunks_cover_input_and_ignore_read_sizes(
            len in 0usize..600_000,
            seed in any::<u64>(),
            step in 1usize..70_000,
        ) {
            let p = ChunkParams::LBFS;
            let data = seeded(len, seed);
            let one_shot = cuts(&data, p, 1 << 20, usize::MAX);
            let trickled = cuts(&data, p, 150_000, step);
            prop_assert_eq!(&one_shot, &trickled);
            let mut joined = Vec::with_capacity(len);
            let mut expect_offset = 0u64;
            for (i, (offset, c)) in one_shot.iter().enumerate() {
                prop_assert_eq!(*offset, expect_offset);
                prop_assert!(c.len() <= p.max_size as usize);
                if i + 1 < one_shot.len() {
                    prop_assert!(c.len() >= p.min_size as usize);
                }
                prop_assert_eq!(c.id(), crate::ChunkId::of(c.data()));
                joined.extend_from_slice(c.data());
                expect_offset += c.len() as u64;
            }
            prop_assert_eq!(joined, data);
        }

        /// A byte-at-a-time reader yields the same chunks as one read.
        #[test]
        fn byte_at_a_time_equals_one_shot(len in 0usize..40_000, seed in any::<u64>()) {
            let data = seeded(len, seed);
            prop_assert_eq!(
                cuts(&data, ChunkParams::LBFS, 1 << 20, usize::MAX),
                cuts(&data, ChunkParams::LBFS, 1 << 20, 1)
            );
        }
    }
}
