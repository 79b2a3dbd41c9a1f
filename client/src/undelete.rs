//! Undoing a deletion: `lbsync-client undelete DIR [--since TIME] [PATH...]`.
//!
//! The server keeps a deleted path as a tombstone on top of its older versions. Undeleting picks
//! tombstones from the folder's current entries, restores each path's newest version that is not
//! deleted (the server commits it as the path's new current version, so every device gets it), and
//! then syncs the directory once so the paths come back here too.
//!
//! Which tombstones ([`choose`]):
//! - without `--since`: **one deletion event**, the newest tombstone in the folder and every other
//!   tombstone committed by the same device within [`EVENT_WINDOW`] before it (an `rm -rf` and the
//!   sync that sent it, or a few deletions in a row);
//! - with `--since TIME`: every tombstone committed at or after TIME, by any device;
//! - with PATHs: only tombstones at or under them, and the event is the newest deletion there.
//!
//! A tombstoned directory that holds a restored path is restored too, so a deleted tree comes back
//! with its directory entries. Nothing is overwritten: a path committed again since it was deleted
//! is no longer a tombstone and is left alone, and a restore that races another commit of the same
//! path is refused by the server and reported.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use lbsync_proto::{CommitOutcome, Entry, EntryKind, SyncPath};
use tracing::info;

use crate::engine::{Report, Syncer};
use crate::error::{Error, Result};
use crate::transfer::display_device;

/// Tombstones by one device this close before the newest belong to the same deletion event.
pub const EVENT_WINDOW: Duration = Duration::from_secs(60);

/// What to undelete.
#[derive(Clone, Debug, Default)]
pub struct UndeleteOptions {
    /// Every deletion committed at or after this instant (Unix nanoseconds); `None`: the most
    /// recent deletion event.
    pub since: Option<i64>,
    /// Only paths at or under these (all when empty).
    pub under: Vec<SyncPath>,
}

/// A path brought back.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The path.
    pub path: SyncPath,
    /// What it is.
    pub kind: EntryKind,
    /// The device that deleted it (`name#id`).
    pub deleted_by: String,
    /// When the server committed the deletion, Unix nanoseconds.
    pub deleted_ns: i64,
    /// The version restored.
    pub from_version: u64,
    /// The new current version.
    pub as_version: u64,
}

/// A path that could not be brought back, and why.
#[derive(Clone, Debug)]
pub struct NotRestored {
    /// The path.
    pub path: SyncPath,
    /// Why, in words.
    pub reason: String,
}

/// What an undelete did.
#[derive(Clone, Debug, Default)]
pub struct Undeleted {
    /// Paths restored on the server.
    pub restored: Vec<Restored>,
    /// Paths that were chosen but could not be restored.
    pub failed: Vec<NotRestored>,
    /// The sync that followed (`None` if nothing was restored).
    pub sync: Option<Report>,
}

impl Undeleted {
    /// True when every chosen path was restored and the directory is in sync.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.sync.as_ref().is_none_or(Report::in_sync)
    }
}

/// "2026-12-01 21:14:03", local time.
fn local_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl std::fmt::Display for Undeleted {
    /// One line per deleting device ("restored 57 files deleted by laptop at 2026-12-01
    /// 21:14:03"), then one per path that could not be restored.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.restored.is_empty() && self.failed.is_empty() {
            return f.write_str("nothing to undelete: no deleted paths match");
        }
        let mut by_device: BTreeMap<&str, Vec<&Restored>> = BTreeMap::new();
        for r in &self.restored {
            by_device.entry(&r.deleted_by).or_default().push(r);
        }
        let mut lines = Vec::new();
        for (device, rs) in by_device {
            let dirs = rs.iter().filter(|r| r.kind == EntryKind::Dir).count();
            let mut what = count(rs.len() - dirs, "file", "files");
            if dirs > 0 {
                what += &format!(" and {}", count(dirs, "directory", "directories"));
            }
            let first = rs.iter().map(|r| r.deleted_ns).min().unwrap_or(0);
            let last = rs.iter().map(|r| r.deleted_ns).max().unwrap_or(0);
            let (first, last) = (local_time(first), local_time(last));
            let when = if first == last {
                format!("at {last}")
            } else {
                format!("between {first} and {last}")
            };
            lines.push(format!(
                "restored {what} deleted by {} {when}",
                display_device(device)
            ));
        }
        for n in &self.failed {
            lines.push(format!("could not restore {}: {}", n.path, n.reason));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// Reads `--since`: RFC 3339 (`2026-12-01T21:14:03+01:00`) or local time `YYYY-MM-DD HH:MM[:SS]`.
/// Returns Unix nanoseconds.
pub fn parse_time(s: &str) -> Result<i64> {
    use chrono::TimeZone;
    let s = s.trim();
    let bad = || {
        Error::Usage(format!(
            "cannot read {s:?} as a time: use RFC 3339 (2026-12-01T21:14:03+01:00) or local \
             time YYYY-MM-DD HH:MM[:SS]"
        ))
    };
    let ns = |t: chrono::DateTime<chrono::Utc>| t.timestamp_nanos_opt().ok_or_else(bad);
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return ns(t.to_utc());
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .ok_or_else(bad)?;
    // A time that occurs twice (clocks going back) means the earlier one; one that never
    // occurs (clocks going forward) is refused.
    let local = chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| Error::Usage(format!("{s:?} does not exist in the local time zone")))?;
    ns(local.to_utc())
}

/// The tombstones to restore among `entries` (the folder's current entry per path), oldest
/// first: see the module docs.
pub fn choose(entries: impl IntoIterator<Item = Entry>, opts: &UndeleteOptions) -> Vec<Entry> {
    let all: HashMap<SyncPath, Entry> = entries
        .into_iter()
        .filter(|e| e.deleted)
        .map(|e| (e.path.clone(), e))
        .collect();
    let under =
        |e: &Entry| opts.under.is_empty() || opts.under.iter().any(|u| e.path.starts_with(u));
    let candidates = all.values().filter(|e| under(e));
    let mut chosen: BTreeMap<SyncPath, Entry> = match opts.since {
        Some(since) => candidates
            .filter(|e| e.committed_ns >= since)
            .map(|e| (e.path.clone(), e.clone()))
            .collect(),
        None => {
            let Some(newest) = candidates
                .clone()
                .max_by_key(|e| (e.committed_ns, e.seq))
                .cloned()
            else {
                return Vec::new();
            };
            let window = i64::try_from(EVENT_WINDOW.as_nanos()).unwrap_or(i64::MAX);
            let from = newest.committed_ns.saturating_sub(window);
            candidates
                .filter(|e| e.device == newest.device && e.committed_ns >= from)
                .map(|e| (e.path.clone(), e.clone()))
                .collect()
        }
    };
    // Deleted directories that hold a chosen path come back with it.
    let parents: Vec<SyncPath> = chosen
        .keys()
        .flat_map(|p| std::iter::successors(p.parent(), SyncPath::parent))
        .collect();
    for p in parents {
        if let Some(e) = all.get(&p) {
            chosen.entry(p).or_insert_with(|| e.clone());
        }
    }
    let mut out: Vec<Entry> = chosen.into_values().collect();
    out.sort_by_key(|e| (e.committed_ns, e.seq));
    out
}

/// The newest version in `history` that is not a deletion.
pub fn newest_live(history: &[Entry]) -> Option<&Entry> {
    history
        .iter()
        .filter(|e| !e.deleted)
        .max_by_key(|e| e.version)
}

/// The path inside `root` that `arg` names: relative to the current directory when that lies
/// inside `root`, else relative to `root`.
pub fn path_arg(root: &Path, arg: &Path) -> Result<SyncPath> {
    let outside = || {
        Error::Usage(format!(
            "{} is not inside {}: name paths inside the synced directory",
            arg.display(),
            root.display()
        ))
    };
    let abs =
        std::path::absolute(arg).map_err(Error::io(format!("resolving {}", arg.display())))?;
    let roots = [std::path::absolute(root).ok(), root.canonicalize().ok()];
    for r in roots.iter().flatten() {
        if let Ok(p) = SyncPath::from_local(r, &abs) {
            return Ok(p);
        }
    }
    if arg.is_relative() {
        let rel = arg.to_str().ok_or_else(outside)?.trim_end_matches('/');
        return SyncPath::new(rel.strip_prefix("./").unwrap_or(rel)).map_err(|_| outside());
    }
    Err(outside())
}

/// Restores what `opts` chooses on the server, then syncs `syncer`'s directory once.
pub async fn undelete(syncer: &mut Syncer, opts: &UndeleteOptions) -> Result<Undeleted> {
    let (entries, _) = syncer.remote.changes_until_caught_up(0).await?;
    let chosen = choose(entries.into_values(), opts);
    let mut out = Undeleted::default();
    let device = syncer.device.clone();
    for tomb in chosen {
        let history = match syncer.remote.history(&tomb.path).await {
            Ok(h) => h,
            Err(e) if e.is_offline() => return Err(e),
            Err(e) => {
                out.failed.push(NotRestored {
                    path: tomb.path,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let Some(old) = newest_live(&history) else {
            out.failed.push(NotRestored {
                path: tomb.path,
                reason: "the server keeps no version from before it was deleted".into(),
            });
            continue;
        };
        match syncer
            .remote
            .restore(&tomb.path, old.version, &device)
            .await
        {
            Ok(CommitOutcome::Committed(e)) => {
                info!("restored {} v{} as v{}", tomb.path, old.version, e.version);
                out.restored.push(Restored {
                    path: tomb.path,
                    kind: old.kind,
                    deleted_by: tomb.device,
                    deleted_ns: tomb.committed_ns,
                    from_version: old.version,
                    as_version: e.version,
                });
            }
            Ok(CommitOutcome::Conflict(cur)) => out.failed.push(NotRestored {
                path: tomb.path,
                reason: format!(
                    "it changed meanwhile (now v{} by {}); see its history",
                    cur.version,
                    display_device(&cur.device)
                ),
            }),
            Err(e) if e.is_offline() => return Err(e),
            Err(e) => out.failed.push(NotRestored {
                path: tomb.path,
                reason: e.to_string(),
            }),
        }
    }
    if !out.restored.is_empty() {
        out.sync = Some(syncer.sync().await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn entry(path: &str, version: u64, deleted: bool, device: &str, at_s: i64) -> Entry {
        Entry {
            version,
            deleted,
            seq: u64::try_from(at_s).unwrap(),
            committed_ns: at_s * S,
            ..Entry::new(SyncPath::new(path).unwrap(), EntryKind::File, device)
        }
    }

    fn paths(v: &[Entry]) -> Vec<&str> {
        let mut p: Vec<&str> = v.iter().map(|e| e.path.as_str()).collect();
        p.sort();
        p
    }

    fn folder() -> Vec<Entry> {
        vec![
            // An old deletion by the laptop, long before the event.
            entry("old.txt", 2, true, "laptop#1", 1_000),
            // The event: the laptop's deletions within 60 s of its newest one.
            entry("a/1.txt", 2, true, "laptop#1", 5_000),
            entry("a/2.txt", 2, true, "laptop#1", 5_030),
            entry("b.txt", 3, true, "laptop#1", 5_059),
            // Another device's deletion in the window is another event.
            entry("desk.txt", 2, true, "desktop#2", 5_010),
            // Live files are never chosen.
            entry("live.txt", 4, false, "laptop#1", 5_040),
        ]
    }

    #[test]
    fn the_event_is_the_newest_deletion_and_the_same_devices_minute_before_it() {
        let chosen = choose(folder(), &UndeleteOptions::default());
        assert_eq!(paths(&chosen), ["a/1.txt", "a/2.txt", "b.txt"]);
        // Oldest first.
        assert_eq!(chosen[0].path.as_str(), "a/1.txt");
    }

    #[test]
    fn a_deletion_just_over_a_minute_before_is_not_in_the_event() {
        let mut f = folder();
        f.push(entry("early.txt", 2, true, "laptop#1", 4_998));
        let chosen = choose(f, &UndeleteOptions::default());
        assert!(!paths(&chosen).contains(&"early.txt"));
        assert_eq!(paths(&chosen).len(), 3);
    }

    #[test]
    fn since_takes_every_device_and_paths_narrow_it() {
        let since = UndeleteOptions {
            since: Some(5_010 * S),
            under: Vec::new(),
        };
        assert_eq!(
            paths(&choose(folder(), &since)),
            ["a/2.txt", "b.txt", "desk.txt"]
        );
        let under_a = UndeleteOptions {
            since: Some(0),
            under: vec![SyncPath::new("a").unwrap()],
        };
        assert_eq!(paths(&choose(folder(), &under_a)), ["a/1.txt", "a/2.txt"]);
    }

    #[test]
    fn with_paths_the_event_is_the_newest_deletion_under_them() {
        let opts = UndeleteOptions {
            since: None,
            under: vec![SyncPath::new("old.txt").unwrap()],
        };
        assert_eq!(paths(&choose(folder(), &opts)), ["old.txt"]);
        // "a" names a directory, not every path that begins with "a".
        let mut f = folder();
        f.push(entry("ab.txt", 2, true, "laptop#1", 5_050));
        let opts = UndeleteOptions {
            since: None,
            under: vec![SyncPath::new("a").unwrap()],
        };
        assert_eq!(paths(&choose(f, &opts)), ["a/1.txt", "a/2.txt"]);
    }

    #[test]
    fn a_deleted_parent_directory_comes_back_with_its_files() {
        let mut f = folder();
        f.push(Entry {
            kind: EntryKind::Dir,
            ..entry("a", 2, true, "laptop#1", 100)
        });
        f.push(Entry {
            kind: EntryKind::Dir,
            ..entry("unrelated", 2, true, "laptop#1", 100)
        });
        let chosen = choose(f, &UndeleteOptions::default());
        assert_eq!(paths(&chosen), ["a", "a/1.txt", "a/2.txt", "b.txt"]);
    }

    #[test]
    fn nothing_deleted_chooses_nothing() {
        let f = vec![entry("live.txt", 1, false, "laptop#1", 10)];
        assert!(choose(f, &UndeleteOptions::default()).is_empty());
    }

    #[test]
    fn the_newest_live_version_skips_deletions() {
        let h = vec![
            entry("f", 4, true, "d", 4),
            entry("f", 3, false, "d", 3),
            entry("f", 2, true, "d", 2),
            entry("f", 1, false, "d", 1),
        ];
        assert_eq!(newest_live(&h).map(|e| e.version), Some(3));
        assert!(newest_live(&h[..1]).is_none());
    }

    #[test]
    fn times_parse_as_rfc3339_or_local() {
        use chrono::TimeZone;
        assert_eq!(
            parse_time("2026-12-01T21:14:03Z").unwrap(),
            1_796_159_643 * S
        );
        assert_eq!(
            parse_time("2026-12-01T22:14:03.5+01:00").unwrap(),
            1_796_159_643 * S + S / 2
        );
        let local = |y, mo, d, h, mi, s| {
            chrono::Local
                .with_ymd_and_hms(y, mo, d, h, mi, s)
                .earliest()
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap()
        };
        assert_eq!(
            parse_time("2026-12-01 21:14:03").unwrap(),
            local(2026, 12, 1, 21, 14, 3)
        );
        assert_eq!(
            parse_time(" 2026-12-01 21:14 ").unwrap(),
            local(2026, 12, 1, 21, 14, 0)
        );
        for bad in ["yesterday", "2026-12-01", "2026-13-01 10:00", "21:14"] {
            let e = parse_time(bad).unwrap_err().to_string();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn path_arguments_are_inside_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let p = path_arg(root, &root.join("proj/sub")).unwrap();
        assert_eq!(p.as_str(), "proj/sub");
        // Relative to the directory when the current one is elsewhere.
        assert_eq!(path_arg(root, Path::new("proj/")).unwrap().as_str(), "proj");
        assert!(path_arg(root, Path::new("/elsewhere/x")).is_err());
    }

    #[test]
    fn the_report_says_who_deleted_what_and_when() {
        let at = 1_796_159_643 * S;
        let r = |path: &str, kind| Restored {
            path: SyncPath::new(path).unwrap(),
            kind,
            deleted_by: "laptop#abc".into(),
            deleted_ns: at,
            from_version: 1,
            as_version: 3,
        };
        let u = Undeleted {
            restored: vec![
                r("a", EntryKind::Dir),
                r("a/1", EntryKind::File),
                r("a/2", EntryKind::File),
            ],
            failed: vec![NotRestored {
                path: SyncPath::new("gone").unwrap(),
                reason: "no version".into(),
            }],
            sync: None,
        };
        let text = u.to_string();
        assert!(
            text.starts_with(&format!(
                "restored 2 files and 1 directory deleted by laptop at {}",
                local_time(at)
            )),
            "{text}"
        );
        assert!(
            text.contains("could not restore gone: no version"),
            "{text}"
        );
        assert!(!u.complete());
    }
}
