//! Large appends to a pack that bypass the page cache (`O_DIRECT`).
//!
//! A pack is written once and read rarely, yet a buffered write copies every byte into freshly
//! allocated page-cache pages: on the machines we measured that copy was a third of the server's
//! CPU during a large upload, more than hashing. A direct write hands the bytes to the disk from an
//! aligned buffer of ours instead.
//!
//! Direct I/O wants the buffer, the file offset and the length aligned to the block size. The
//! pack's records are not, so [`DirectAppender::append`] stages them in an aligned buffer that
//! starts at the block holding the pack's end (its partial block is read back first), writes whole
//! blocks, and then cuts the file back to its true length: the bytes on disk are exactly what a
//! buffered append writes, and so is the crash behaviour (the caller syncs afterwards and only
//! then indexes the records; a torn or padded tail is truncated on open).
//!
//! Small appends stay buffered (see [`DIRECT_MIN`]): for them the extra block read and the
//! truncation would cost more than the copy saves.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Direct I/O alignment: the largest logical block size in common use.
const ALIGN: usize = 4096;
/// The staging buffer: bytes are written to the disk in pieces of this size.
const STAGE: usize = 4 << 20;
/// Appends of fewer bytes than this are written through the page cache.
pub(super) const DIRECT_MIN: usize = 1 << 20;

/// A second handle on a pack, opened for direct writes, with its staging buffer.
pub(super) struct DirectAppender {
    file: File,
    /// Allocated on first use; `STAGE + ALIGN` bytes so that an aligned window of `STAGE` fits.
    buf: Vec<u8>,
}

impl DirectAppender {
    /// Opens `path` for direct writes; `None` where the platform or file system has no direct
    /// I/O (the caller then writes through the page cache).
    pub(super) fn open(path: &Path) -> Option<DirectAppender> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()?;
            Some(DirectAppender {
                file,
                buf: Vec::new(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (path, OpenOptions::new());
            None
        }
    }

    /// Writes `parts` at offset `len` of the pack (whose buffered handle is `pack`) and sets the
    /// file's length to `len` plus their total. Does not sync. An `InvalidInput` error means the
    /// file system refused direct I/O after all (nothing was written past `len`).
    pub(super) fn append(
        &mut self,
        pack: &File,
        len: u64,
        parts: &[IoSlice<'_>],
    ) -> io::Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0; STAGE + ALIGN];
        }
        let start = self.buf.as_ptr().align_offset(ALIGN);
        let stage = &mut self.buf[start..start + STAGE];
        let mut at = len - len % ALIGN as u64;
        let mut fill = (len - at) as usize;
        // The block holding the pack's end: its head is rewritten with the same bytes.
        pack.read_exact_at(&mut stage[..fill], at)?;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let n = part.len().min(STAGE - fill);
                stage[fill..fill + n].copy_from_slice(&part[..n]);
                fill += n;
                part = &part[n..];
                if fill == STAGE {
                    self.file.write_all_at(stage, at)?;
                    at += STAGE as u64;
                    fill = 0;
                }
            }
        }
        if fill > 0 {
            let padded = fill.next_multiple_of(ALIGN);
            stage[fill..padded].fill(0);
            self.file.write_all_at(&stage[..padded], at)?;
        }
        // `at + fill` is where the appended bytes end.
        pack.set_len(at + fill as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends through the direct handle, at unaligned offsets and across the staging buffer,
    /// leave exactly the bytes a plain append would.
    #[test]
    fn direct_appends_write_exactly_the_bytes_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let pack = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        pack.write_all_at(b"header..", 0).unwrap();
        let Some(mut direct) = DirectAppender::open(&path) else {
            eprintln!("no direct I/O here: nothing to test");
            return;
        };
        let mut expected = b"header..".to_vec();
        let pieces: Vec<Vec<u8>> = [1usize, 4095, 4096, 10_000, STAGE + 17, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        for pair in pieces.chunks(2) {
            let parts: Vec<IoSlice<'_>> = pair.iter().map(|p| IoSlice::new(p)).collect();
            match direct.append(&pack, expected.len() as u64, &parts) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    eprintln!("this file system refuses direct writes: nothing to test");
                    return;
                }
                Err(e) => panic!("direct append: {e}"),
            }
            for p in pair {
                expected.extend_from_slice(p);
            }
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        }
    }
}
