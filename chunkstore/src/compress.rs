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

/// `data` zstd-compressed, if that saves at least 1/32 of its size. Random data (most media,
/// archives, encrypted files) is recognised from a 4 KiB sample without compressing it all.
pub fn compress_if_smaller(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() > 2 * SAMPLE {
        let sample = &data[..SAMPLE];
        let probe = compress(sample)?;
        if probe.len() >= sample.len() - sample.len() / 32 {
            return None;
        }
    }
    compress(data).filter(|z| z.len() < data.len() - data.len() / 32)
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
