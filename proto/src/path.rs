//! [`SyncPath`]: a path inside a synced folder, checked so that it can never leave the folder.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The top-level directory of a synced folder that never syncs: each client keeps its state there.
pub const RESERVED_DIR: &str = ".lbsync";

/// The longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    #[error("empty path: name a file inside the folder")]
    Empty,
    /// The path is not valid UTF-8.
    #[error("path {0:?} is not valid UTF-8: rename the file")]
    NotUtf8(String),
    /// The path starts with `/`.
    #[error("path {0:?} is absolute: paths are relative to the synced folder")]
    Absolute(String),
    /// The path has a `..` or `.` component.
    #[error("path {0:?} has a '.' or '..' component: paths must stay inside the synced folder")]
    DotComponent(String),
    /// The path has an empty component (`a//b`, or a trailing `/`).
    #[error("path {0:?} has an empty component ('//' or a trailing '/')")]
    EmptyComponent(String),
    /// The path contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// The path is too long.
    #[error("path of {0} bytes is longer than the {MAX_PATH_BYTES} allowed")]
    TooLong(usize),
    /// The path is `.lbsync` or lies under it: that directory holds each client's private state.
    #[error(
        "path {0:?} is inside .lbsync/, which holds each client's private state and never syncs"
    )]
    Reserved(String),
    /// A local path is not inside the synced directory.
    #[error("{0} is not inside the synced directory")]
    Outside(String),
}

/// A relative, `/`-separated, UTF-8 path with no empty, `.` or `..` component and no NUL, and not
/// inside the reserved [`RESERVED_DIR`] (`.lbsync`, `.lbsync/...`). Joined to a folder's root it
/// always names something inside that root, and never a client's private state.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyncPath(String);

impl SyncPath {
    /// Checks `path`.
    pub fn new(path: impl Into<String>) -> Result<Self, PathError> {
        let path = path.into();
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(path.len()));
        }
        if path.contains('\0') {
            return Err(PathError::Nul(path));
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute(path));
        }
        for part in path.split('/') {
            match part {
                "" => return Err(PathError::EmptyComponent(path)),
                "." | ".." => return Err(PathError::DotComponent(path)),
                _ => {}
            }
        }
        // Any case: a case-insensitive file system takes `.LBSYNC` for `.lbsync`.
        if path
            .split('/')
            .next()
            .is_some_and(|first| first.eq_ignore_ascii_case(RESERVED_DIR))
        {
            return Err(PathError::Reserved(path));
        }
        Ok(Self(path))
    }

    /// Checks a path that arrived as bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PathError> {
        let s = std::str::from_utf8(bytes)
            .map_err(|_| PathError::NotUtf8(String::from_utf8_lossy(bytes).into_owned()))?;
        Self::new(s)
    }

    /// The path of `local`, a path under `root`.
    pub fn from_local(root: &Path, local: &Path) -> Result<Self, PathError> {
        let rel = local
            .strip_prefix(root)
            .map_err(|_| PathError::Outside(local.display().to_string()))?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(
                    p.to_str()
                        .ok_or_else(|| PathError::NotUtf8(p.to_string_lossy().into_owned()))?,
                ),
                _ => return Err(PathError::Outside(local.display().to_string())),
            }
        }
        Self::new(parts.join("/"))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where this path is under `root`.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(self.0.split('/'));
        p
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent directory, or `None` at the top level.
    pub fn parent(&self) -> Option<SyncPath> {
        self.0.rsplit_once('/').map(|(p, _)| SyncPath(p.to_owned()))
    }

    /// Whether `self` is `other` or lies under it.
    pub fn starts_with(&self, other: &SyncPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for SyncPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SyncPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for SyncPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, PathError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_clean_relative_paths() {
        for ok in [
            "a",
            "a/b.txt",
            "dir/sub/.hidden",
            "..foo",
            "a/b..c",
            "ünï cödé/名前",
        ] {
            assert_eq!(SyncPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_escapes_with_reasons() {
        let cases = [
            ("", "empty path"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/./b", "'.'"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a\0b", "NUL"),
        ];
        for (bad, why) in cases {
            let err = SyncPath::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(matches!(
            SyncPath::from_bytes(b"a/\xff"),
            Err(PathError::NotUtf8(_))
        ));
        assert!(matches!(
            SyncPath::new("a".repeat(5000)),
            Err(PathError::TooLong(5000))
        ));
    }

    #[test]
    fn the_state_directory_is_reserved_at_the_top_only() {
        for bad in [".lbsync", ".lbsync/state.json", ".lbsync/tmp/x"] {
            let err = SyncPath::new(bad).unwrap_err();
            assert_eq!(err, PathError::Reserved(bad.into()));
            assert!(err.to_string().contains("never syncs"), "{err}");
        }
        let root = Path::new("/home/u/sync");
        assert!(matches!(
            SyncPath::from_local(root, Path::new("/home/u/sync/.lbsync/state.json")),
            Err(PathError::Reserved(_))
        ));
        assert!(matches!(
            SyncPath::from_local(root, Path::new("/home/u/sync/.lbsync")),
            Err(PathError::Reserved(_))
        ));
        for ok in [
            ".lbsyncignore",
            ".lbsync2",
            "a/.lbsync",
            "a/.lbsync/state.json",
        ] {
            assert!(SyncPath::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn local_round_trip() {
        let root = Path::new("/home/u/sync");
        let p = SyncPath::new("docs/a.txt").unwrap();
        let local = p.to_local(root);
        assert_eq!(local, Path::new("/home/u/sync/docs/a.txt"));
        assert_eq!(SyncPath::from_local(root, &local).unwrap(), p);
        assert!(SyncPath::from_local(root, Path::new("/home/u/other")).is_err());
        assert_eq!(p.parent().unwrap().as_str(), "docs");
        assert_eq!(p.file_name(), "a.txt");
        assert!(p.starts_with(&SyncPath::new("docs").unwrap()));
        assert!(
            !SyncPath::new("docsx")
                .unwrap()
                .starts_with(&SyncPath::new("docs").unwrap())
        );
    }

    proptest! {
        /// Whatever bytes arrive, an accepted path joined to a root stays under the root.
        #[test]
        fn accepted_paths_stay_inside(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = SyncPath::from_bytes(&bytes) {
                let root = Path::new("/srv/root");
                let local = p.to_local(root);
                prop_assert!(local.starts_with(root));
                prop_assert!(local.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
            }
        }
    }
}
