//! Conflicted copies: `<stem> (conflicted copy <device> <YYYY-MM-DD HHMMSS>).<ext>`.

use std::path::Path;

use lbsync_proto::SyncPath;

const MARK: &str = " (conflicted copy ";

/// The name of a conflicted copy of `path` made by `device` at `when` (local time), not yet taken
/// under `root`. A copy of a copy gets a fresh mark, never a nested one.
pub fn conflicted_copy(
    root: &Path,
    path: &SyncPath,
    device: &str,
    when: chrono::DateTime<chrono::Local>,
) -> SyncPath {
    conflicted_copy_avoiding(root, path, device, when, &|_| false)
}

/// [`conflicted_copy`], also passing over names `taken` says are in use elsewhere (on the
/// server, for one: another device may have made the same copy in the same second).
pub fn conflicted_copy_avoiding(
    root: &Path,
    path: &SyncPath,
    device: &str,
    when: chrono::DateTime<chrono::Local>,
    taken: &dyn Fn(&SyncPath) -> bool,
) -> SyncPath {
    let name = path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let stem = match stem.find(MARK) {
        Some(i) if stem.ends_with(')') => &stem[..i],
        _ => stem,
    };
    let stamp = when.format("%Y-%m-%d %H%M%S");
    let device: String = device
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    let parent = path.parent().map(|p| format!("{p}/")).unwrap_or_default();
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!(" {n}")
        };
        let candidate = format!("{parent}{stem}{MARK}{device} {stamp}{suffix}){ext}");
        let candidate = SyncPath::new(candidate).expect("built from a valid path");
        if std::fs::symlink_metadata(candidate.to_local(root)).is_err() && !taken(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// Whether `path` is a conflicted copy.
pub fn is_conflicted_copy(path: &SyncPath) -> bool {
    path.file_name().contains(MARK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_are_flat_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let when = chrono::Local
            .with_ymd_and_hms(2026, 11, 24, 12, 30, 1)
            .unwrap();
        let p = SyncPath::new("docs/notes.txt").unwrap();
        let c = conflicted_copy(dir.path(), &p, "laptop", when);
        assert_eq!(
            c.as_str(),
            "docs/notes (conflicted copy laptop 2026-11-24 123001).txt"
        );
        assert!(is_conflicted_copy(&c));
        let again = conflicted_copy(dir.path(), &c, "desk", when);
        assert_eq!(
            again.as_str(),
            "docs/notes (conflicted copy desk 2026-11-24 123001).txt"
        );
        let bare = conflicted_copy(dir.path(), &SyncPath::new(".bashrc").unwrap(), "d", when);
        assert_eq!(
            bare.as_str(),
            ".bashrc (conflicted copy d 2026-11-24 123001)"
        );
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::fs::write(c.to_local(dir.path()), b"x").unwrap();
        let second = conflicted_copy(dir.path(), &p, "laptop", when);
        assert_eq!(
            second.as_str(),
            "docs/notes (conflicted copy laptop 2026-11-24 123001 2).txt"
        );
    }
}
