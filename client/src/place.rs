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
use std::io::Write;
use std::path::{Path, PathBuf};

use lbsync_proto::SyncPath;

/// Before a file in the temp directory may come to hold something a person wrote (a file moved
/// aside, or the one a download swaps out), a record beside it, `<file>.origin`, says which path
/// it came from and the inode the temp file had before (0: none). A crash then cannot strand it:
/// on start, `Syncer::recover_tmp` puts each such file back, or keeps it as a conflicted copy.
pub fn note_origin(file: &Path, path: &SyncPath, inode_before: u64) -> io::Result<()> {
    let mut f = std::fs::File::create(origin_file(file))?;
    write!(f, "{inode_before}\n{path}\n")?;
    f.sync_all()
}

/// The record written by [`note_origin`] for `file`, if any: (inode before, path).
pub fn origin_of(file: &Path) -> Option<(u64, SyncPath)> {
    let text = std::fs::read_to_string(origin_file(file)).ok()?;
    let (inode, path) = text.split_once('\n')?;
    Some((
        inode.parse().ok()?,
        SyncPath::new(path.strip_suffix('\n')?).ok()?,
    ))
}

/// Forgets the record of `file` (it was dealt with).
pub fn clear_origin(file: &Path) {
    let _ = std::fs::remove_file(origin_file(file));
}

/// `<file>.origin`.
pub fn origin_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".origin");
    PathBuf::from(name)
}

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
/// and returns the new path; `None` if nothing was at `path`. `origin`, the synced path it is, is
/// recorded first (see [`note_origin`]); the caller clears the record once it has dealt with it.
pub fn move_aside(
    path: &Path,
    dir: &Path,
    stem: &str,
    origin: &SyncPath,
) -> io::Result<Option<PathBuf>> {
    for n in 1u32.. {
        let name = if n == 1 {
            format!("{stem}.aside")
        } else {
            format!("{stem}.aside.{n}")
        };
        let to = dir.join(name);
        if present(&to) {
            continue;
        }
        note_origin(&to, origin, 0)?;
        match rename_noreplace(path, &to) {
            Ok(()) => return Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !present(path) => {
                clear_origin(&to);
                return Ok(None);
            }
            Err(e) => {
                clear_origin(&to);
                return Err(e);
            }
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
        let origin = SyncPath::new("sub/a").unwrap();
        let first = move_aside(&a, &aside, "x", &origin).unwrap().unwrap();
        let second = move_aside(&b, &aside, "x", &origin).unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&first).unwrap(), b"a");
        assert_eq!(fs::read(&second).unwrap(), b"b");
        assert_eq!(
            origin_of(&first),
            Some((0, origin.clone())),
            "its origin is recorded"
        );
        assert_eq!(
            move_aside(&a, &aside, "x", &origin).unwrap(),
            None,
            "a is gone"
        );
    }
}
