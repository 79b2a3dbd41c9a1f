//! zstd for chunks, on disk and on the wire: only when it pays.

use std::cell::RefCell;

/// Fast: a chunk is compressed once per hop, and level 1 gives up quickly on random data.
const LEVEL: i32 = 1;
/// Chunks longer than this are probed with a sample of this size first.
const SAMPLE: usize = 4096;

thread_local! {
    /// One compression context per thread: making one per chunk costs more than compressing it.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    /// Likewise for decompression.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        c.as_mut()?.compress(data).ok()
    })
}

/// `data` as one zstd frame, whatever it saves (a format that is always zstd: block deltas).
pub fn compress_frame(data: &[u8]) -> std::io::Result<Vec<u8>> {
    compress(data).ok_or_else(|| std::io::Error::other("zstd failed to compress"))
}

/// Whether `compressed` bytes for `raw` bytes are worth keeping: they save at least 1/32.
pub(crate) fn pays(compressed: usize, raw: usize) -> bool {
    compressed < raw - raw / 32
}

/// `data` zstd-compressed, if that saves at least 1/32 of its size. Random data (most media,
/// archives, encrypted files) is recognised from a 4 KiB sample without compressing it all.
pub fn compress_if_smaller(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() > 2 * SAMPLE {
        let sample = &data[..SAMPLE];
        if !pays(compress(sample)?.len(), sample.len()) {
            return None;
        }
    }
    compress(data).filter(|z| pays(z.len(), data.len()))
}

/// [`compress_if_smaller`] for the chunks of one file in turn, trying less after chunks that did
/// not compress: after the n-th such chunk in a row it skips the next 2^(n-1) - 1 (at most
/// [`CompressProbe::MAX_SKIP`]). A file of random data (media, archives) then costs a probe
/// every 64 chunks instead of one a chunk, and a compressible stretch after a random one is found
/// again within 64 chunks; one chunk that compresses starts trying every chunk again.
#[derive(Clone, Debug, Default)]
pub struct CompressProbe {
    misses: u32,
    skip: u32,
}

impl CompressProbe {
    /// The most chunks skipped in a row.
    pub const MAX_SKIP: u32 = 63;

    /// `data` compressed when that pays and this chunk's turn to be tried came.
    pub fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let z = compress_if_smaller(data);
        if z.is_some() {
            self.misses = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
            self.skip = Self::MAX_SKIP.min((1 << (self.misses - 1).min(31)) - 1);
        }
        z
    }
}

/// Decompresses zstd `data` that must inflate to at most `max_len` bytes (more is an error, so a
/// small frame cannot make the caller allocate without bound).
pub fn decompress(data: &[u8], max_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("just made").decompress(data, max_len)
    })
}

/// Chunks compressed together ([`compress_together`]): a first upload of many small files,
/// where a stronger level pays in bytes and the files' other costs dwarf its time.
pub const TOGETHER_LEVEL: i32 = 9;

/// Chunks compressed together by a server for a download: it compresses for every client that
/// downloads, and every message of a large compressible file too, so a level that runs at a few
/// hundred MB/s a core. Measured on Django 5.1.4's tree (51 MB as a tar, 4 MiB windows): level 3
/// 370 MB/s to 9.76 MB, level 6 121 MB/s to 8.72 MB; the first download of that tree cost
/// 10.74 MB at level 3 and 9.76 MB at level 6 (rsync -z: 10.14 MB).
pub const DOWNLOAD_TOGETHER_LEVEL: i32 = 3;

/// The pieces, back to back, as one zstd frame: what many small chunks share (the same imports,
/// headers, markup) is found across them, as it is not when each is compressed alone.
/// [`decompress`] with their total length inverts it.
pub fn compress_together(pieces: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    compress_together_at(pieces, TOGETHER_LEVEL)
}

/// [`compress_together`] at zstd level `level`.
pub fn compress_together_at(pieces: &[&[u8]], level: i32) -> std::io::Result<Vec<u8>> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), level)?;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    enc.set_pledged_src_size(Some(total as u64))?;
    for p in pieces {
        std::io::Write::write_all(&mut enc, p)?;
    }
    enc.finish()
}

/// Deltas are small and rare next to plain chunks: a stronger level costs little.
const DELTA_LEVEL: i32 = 3;

/// `data` zstd-compressed with `base` as a raw-content prefix (a single-use dictionary): an edited
/// chunk against the chunk(s) it replaced comes to little more than the edit. The receiver needs
/// the same `base` ([`decompress_against`]).
pub fn compress_against(data: &[u8], base: &[u8]) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let io = |code: usize| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(DELTA_LEVEL))
        .map_err(io)?;
    cctx.ref_prefix(base).map_err(io)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(io)?;
    Ok(out)
}

/// Inverts [`compress_against`]: `data` must inflate, with `base` as its prefix, to at most
/// `max_len` bytes (more is an error).
pub fn decompress_against(data: &[u8], base: &[u8], max_len: usize) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::DCtx;
    let io = |code: usize| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
    let mut dctx = DCtx::create();
    dctx.ref_prefix(base).map_err(io)?;
    let mut out = Vec::with_capacity(max_len);
    dctx.decompress(&mut out, data).map_err(io)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_compressed_together_come_back_whole_and_beat_one_by_one() {
        let piece = |i: usize| {
            format!("// Copyright the authors. Licensed under MIT.\nuse std::io;\nfn f{i}() {{}}\n")
                .repeat(3)
                .into_bytes()
        };
        let pieces: Vec<Vec<u8>> = (0..200).map(piece).collect();
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let frame = compress_together(&refs).unwrap();
        let total: usize = pieces.iter().map(Vec::len).sum();
        assert_eq!(decompress(&frame, total).unwrap(), pieces.concat());
        assert!(
            decompress(&frame, total - 1).is_err(),
            "bounded by the declared length"
        );
        let alone: usize = pieces
            .iter()
            .map(|p| compress_if_smaller(p).map_or(p.len(), |z| z.len()))
            .sum();
        assert!(
            frame.len() * 4 < alone,
            "{} together, {alone} alone",
            frame.len()
        );
    }

    #[test]
    fn compresses_text_not_noise() {
        let text = b"lbsync keeps folders in sync ".repeat(1000);
        let z = compress_if_smaller(&text).unwrap();
        assert!(z.len() < text.len() / 10);
        assert_eq!(decompress(&z, text.len()).unwrap(), text);
        assert!(
            decompress(&z, text.len() - 1).is_err(),
            "never more than asked for"
        );
        let mut noise = vec![0u8; 20_000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        assert!(compress_if_smaller(&noise).is_none());
    }

    #[test]
    fn the_probe_backs_off_on_noise_and_comes_back_for_text() {
        let text = b"lbsync keeps folders in sync ".repeat(300);
        let mut noise = vec![0u8; 8192];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let mut probe = CompressProbe::default();
        assert!(probe.compress(&text).is_some());
        // Noise is tried as the 1st, 2nd, 4th, 8th... chunk in a row, then every 64th.
        let mut tries = Vec::new();
        for i in 0..300 {
            if probe.skip == 0 {
                tries.push(i);
            }
            assert!(probe.compress(&noise).is_none());
        }
        assert_eq!(&tries[..8], &[0, 1, 3, 7, 15, 31, 63, 127]);
        assert_eq!(tries[8] - tries[7], 64);
        // Text after noise is compressed again within 64 chunks, then every chunk.
        let found = (0..64).position(|_| probe.compress(&text).is_some());
        assert!(found.is_some(), "text was never tried");
        assert!(probe.compress(&text).is_some());
        assert!(probe.compress(&text).is_some());
    }

    #[test]
    fn an_edit_against_its_base_costs_about_the_edit() {
        let mut base = vec![0u8; 8192];
        blake3::Hasher::new().finalize_xof().fill(&mut base);
        let mut edited = base.clone();
        edited.splice(4000..4000, *b"a line inserted in the middle\n");
        let z = compress_against(&edited, &base).unwrap();
        assert!(z.len() < 80, "{} bytes for a 30-byte insert", z.len());
        assert_eq!(decompress_against(&z, &base, edited.len()).unwrap(), edited);
        assert!(
            decompress_against(&z, &base, edited.len() - 1).is_err(),
            "never more than asked for"
        );
        let wrong_base = vec![1u8; 8192];
        assert_ne!(
            decompress_against(&z, &wrong_base, edited.len()).ok(),
            Some(edited),
            "the base is part of the encoding"
        );
    }
}
