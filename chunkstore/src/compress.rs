//! zstd for chunks, on disk and on the wire: only when it pays.

use std::cell::RefCell;

/// Fast: a chunk is compressed once per hop, and level 1 gives up quickly on random data.
const LEVEL: i32 = 1;
/// Chunks longer than this are probed with a sample of this size first.
const SAMPLE: usize = 4096;

thread_local! {
    /// One compression context per thread: making one per chunk costs more than compressing it.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_text_not_noise() {
        let text = b"lbsync keeps folders in sync ".repeat(1000);
        let z = compress_if_smaller(&text).unwrap();
        assert!(z.len() < text.len() / 10);
        assert_eq!(zstd::bulk::decompress(&z, text.len()).unwrap(), text);
        let mut noise = vec![0u8; 20_000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        assert!(compress_if_smaller(&noise).is_none());
    }
}
