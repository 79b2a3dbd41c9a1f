//! Confinement: nothing is read or written outside the synced folder, whatever a path says.
//!
//! A [`SyncPath`] cannot name `..` or an absolute path, but a component of it can be a symlink on
//! disk (`docs -> /etc`): writing `docs/passwd` through it would leave the folder. So before a path
//! is read, written or removed, every parent is checked to be a real directory (not a symlink,
//! not a file) and missing parents are created one at a time, each checked; a parent that is a
//! symlink is refused with a per-path error. Files are opened with `O_NOFOLLOW`, so a last
//! component that turned into a symlink is not followed either. `.lbsync/` is never a target:
//! `SyncPath` refuses it as a first component.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use lbsync_proto::SyncPath;

use crate::error::{Error, Result};
use crate::state::STATE_DIR;

/// What is in the way of a path, if anything: the first parent that is not a real directory.
/// `Ok(None)` if every parent is a directory or missing.
fn blocked_parent(root: &Path, path: &SyncPath) -> io::Result<Option<String>> {
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = path.as_str().split('/').collect();
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        // Case-insensitive file systems (macOS, Windows) take `.LBSYNC` for `.lbsync`.
        if i == 0 && part.eq_ignore_ascii_case(STATE_DIR) {
            return Ok(Some(format!("{STATE_DIR}/ holds the client's state")));
        }
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() => {}
            Ok(md) => {
                let what = if md.file_type().is_symlink() {
                    "a symlink, which is never followed"
                } else {
                    "not a directory"
                };
                return Ok(Some(format!(
                    "its parent {} is {what}",
                    parts[..=i].join("/")
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Checks that every existing parent of `path` is a real directory inside `root`, and returns
/// the local path.
pub fn check(root: &Path, path: &SyncPath) -> Result<PathBuf> {
    match blocked_parent(root, path) {
        Ok(None) => Ok(path.to_local(root)),
        Ok(Some(reason)) => Err(Error::Confined {
            path: path.to_string(),
            reason,
        }),
        Err(e) => Err(Error::io(format!("checking the parents of {path}"))(e)),
    }
}

/// Like [`check`], and creates the missing parents of `path`, one at a time, never through a
/// symlink. Returns the local path.
pub fn make_parents(root: &Path, path: &SyncPath) -> Result<PathBuf> {
    let dest = check(root, path)?;
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = path.as_str().split('/').collect();
    for part in &parts[..parts.len() - 1] {
        at.push(part);
        match fs::create_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Checked above; a symlink put there since is caught here.
                if !fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
                    return Err(Error::Confined {
                        path: path.to_string(),
                        reason: format!("its parent {} is not a directory", at.display()),
                    });
                }
            }
            Err(e) => return Err(Error::io(format!("creating {}", at.display()))(e)),
        }
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_parent_is_refused_and_nothing_is_created_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(root.join("real")).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();

        let p = |s: &str| SyncPath::new(s).unwrap();
        assert!(check(&root, &p("real/a.txt")).is_ok());
        assert!(check(&root, &p("new/deeper/a.txt")).is_ok());
        let err = make_parents(&root, &p("link/sub/a.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("link is a symlink"), "{err}");
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside"
        );
        let err = check(&root, &p("file/a.txt")).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");

        make_parents(&root, &p("new/deeper/a.txt")).unwrap();
        assert!(root.join("new/deeper").is_dir());
    }
}
