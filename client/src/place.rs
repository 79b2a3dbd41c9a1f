//! Putting files in place and taking them away without losing a write that lands meanwhile.
//!
//! Between the moment a sync looks at a path and the moment it replaces or deletes it, a person
//! (or an editor) may write to it. A plain `rename` over the path, or an `unlink`, would drop
//! that write without a trace. So nothing is ever replaced or removed by name alone: the new
//! file and the old one swap places atomically (`renameat2(RENAME_EXCHANGE)` on Linux,
//! `renamex_np(RENAME_SWAP)` on macOS), or the old one is moved aside, and what was there is
//! looked at once it can no longer change by name. The caller keeps it if it is not what was
//! synced.
//!
//! Where the file system cannot swap (old kernels, some network file systems), [`swap_in`] falls
//! back to a plain rename, and the check made just before it is all there is.

use std::io;
use std::path::{Path, PathBuf};

/// Moves `from` to `to`. If something is at `to`, the two swap places and `true` is returned:
/// `from` then holds what was at `to`, for the caller to inspect and keep or delete.
pub fn swap_in(from: &Path, to: &Path) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use rustix::io::Errno;
        // A path that appears or vanishes between the two attempts is tried again.
        for _ in 0..8 {
            match renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE) {
                Ok(()) => return Ok(true),
                Err(Errno::NOENT) if present(from) => {}
                Err(e) if unsupported(e) => break,
                Err(e) => return Err(e.into()),
            }
            match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(false),
                Err(Errno::EXIST) => {}
                Err(e) if unsupported(e) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    std::fs::rename(from, to).map(|()| false)
}

/// Moves `from` to `to` unless something is at `to` (then fails with `AlreadyExists`), where the
/// file system can tell atomically; elsewhere it checks first.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Err(e) if unsupported(e) => {}
            res => return res.map_err(io::Error::from),
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", to.display()),
        ));
    }
    std::fs::rename(from, to)
}

/// Moves `path` into `dir` under a name not taken there (`<stem>.aside`, `<stem>.aside.2`, ...)
/// and returns the new path; `None` if nothing was at `path`.
pub fn move_aside(path: &Path, dir: &Path, stem: &str) -> io::Result<Option<PathBuf>> {
    for n in 1u32.. {
        let name = if n == 1 {
            format!("{stem}.aside")
        } else {
            format!("{stem}.aside.{n}")
        };
        let to = dir.join(name);
        match rename_noreplace(path, &to) {
            Ok(()) => return Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !present(path) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    unreachable!("some name is free")
}

/// Whether something is at `path` (a dangling symlink counts).
fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Whether a `renameat2` error means the flags are not supported here, not that this rename
/// failed.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn swapping_in_hands_back_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let (new, dest) = (dir.path().join("new"), dir.path().join("dest"));
        fs::write(&new, b"server").unwrap();
        assert!(!swap_in(&new, &dest).unwrap(), "nothing was there");
        assert_eq!(fs::read(&dest).unwrap(), b"server");
        assert!(!new.exists());

        fs::write(&new, b"server 2").unwrap();
        assert!(swap_in(&new, &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"server 2");
        assert_eq!(
            fs::read(&new).unwrap(),
            b"server",
            "the old file is handed back"
        );
    }

    #[test]
    fn a_write_through_an_open_handle_lands_in_the_displaced_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (new, dest) = (dir.path().join("new"), dir.path().join("dest"));
        fs::write(&dest, b"line 1\n").unwrap();
        let mut editor = fs::OpenOptions::new().append(true).open(&dest).unwrap();
        fs::write(&new, b"server\n").unwrap();
        assert!(swap_in(&new, &dest).unwrap());
        editor.write_all(b"line 2\n").unwrap();
        assert_eq!(fs::read(&new).unwrap(), b"line 1\nline 2\n");
        assert_eq!(fs::read(&dest).unwrap(), b"server\n");
    }

    #[test]
    fn noreplace_refuses_to_overwrite_and_move_aside_finds_a_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"b", "nothing overwritten");

        let aside = dir.path().join("aside");
        fs::create_dir(&aside).unwrap();
        let first = move_aside(&a, &aside, "x").unwrap().unwrap();
        let second = move_aside(&b, &aside, "x").unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&first).unwrap(), b"a");
        assert_eq!(fs::read(&second).unwrap(), b"b");
        assert_eq!(move_aside(&a, &aside, "x").unwrap(), None, "a is gone");
    }
}
