//! The metadata a server keeps beside the chunks, behind traits: folders (entries, history,
//! journal, keys), users (tokens, owners, members) and dedup scopes.
//!
//! Two backends implement them: the store's own sled database (`--store DIR`, one server
//! process: [`crate::folders::SledFolders`], [`crate::users::SledUsers`],
//! [`crate::scope::SledScopes`]) and PostgreSQL (`--metadata postgres://…`, shared by several
//! servers). Both are synchronous; the service calls them from blocking threads. Whatever the
//! backend, the rules are the same and live here or in the callers, not in the backends: the
//! conflict rule of a commit is [`decide`], names are checked by
//! [`crate::folders::check_folder_name`] and [`crate::users::check_user_name`].
//!
//! What every backend must keep (the contract tests in `server/tests/it/meta.rs` check them):
//! - a commit batch is applied in order, each commit seeing the ones before it, in transactions
//!   that land whole or not at all, and is durable before the call returns;
//! - journal seqs are dense and ordered per folder: the folder's head is the last seq handed out,
//!   and every seq up to it was given to exactly one commit;
//! - nothing a reader returns can be taken back by a crash (it was durable when read).

use std::sync::Arc;

use lbsync_chunkstore::{ChunkId, ChunkStore, Manifest, ManifestId};
use lbsync_proto::{CommitOutcome, Entry, SyncPath, pb};

use crate::error::{Error, Result};
use crate::folders::Backlog;
use crate::users::{Level, TokenInfo};

/// The folders of a store, shared by every handler.
pub type Folders = Arc<dyn FolderMeta>;
/// The users of a store.
pub type Users = Arc<dyn UserMeta>;
/// The dedup scopes of a store's folders.
pub type Scopes = Arc<dyn ScopeMeta>;

/// What a commit of an entry over `base_version` does to a path whose current entry is
/// `current`: `Ok(version)` with the version the entry takes, or `Err(current)` with what a
/// conflict answer shows (a version-0 tombstone for a path that never existed).
///
/// A commit lands when its base is the path's current version, or when it is a creation (base
/// 0) over nothing or over a tombstone. In an encrypted folder, a creation over a tombstone is
/// a conflict: the entry was sealed for version 1, not for the tombstone's version + 1.
#[allow(clippy::result_large_err)] // the conflict's entry is the answer, once a commit
pub fn decide(
    current: Option<&Entry>,
    entry: &Entry,
    base_version: u64,
    encrypted: bool,
) -> std::result::Result<u64, Entry> {
    let current_version = current.map_or(0, |c| c.version);
    let recreating = base_version == 0 && current.is_none_or(|c| c.deleted && !encrypted);
    if base_version != current_version && !recreating {
        return Err(current.cloned().unwrap_or_else(|| Entry {
            version: 0,
            ..Entry::tombstone(entry.path.clone(), entry.kind, "")
        }));
    }
    Ok(current_version + 1)
}

/// The error a commit transaction gives when the folder's encryption changed since the commit's
/// entries were checked (a folder only ever becomes encrypted).
pub fn made_encrypted(folder: &str) -> Error {
    Error::Precondition(format!(
        "folder {folder} was made encrypted while this commit was on its way: nothing was \
         committed; sync again (the client must now seal its entries)"
    ))
}

/// Folders: current entries, history, the change journal and an encrypted folder's keys.
pub trait FolderMeta: Send + Sync + 'static {
    /// Creates the folder if it does not exist; returns its head.
    fn ensure(&self, folder: &str) -> Result<u64>;

    /// The folder's head (the seq of its last commit); [`Error::NotFound`] if it does not
    /// exist.
    fn head(&self, folder: &str) -> Result<u64>;

    /// Every folder's name, sorted.
    fn names(&self) -> Result<Vec<String>>;

    /// An encrypted folder's wrapped keys (generation 0 and none for a plain folder).
    fn keys(&self, folder: &str) -> Result<pb::FolderKeys>;

    /// Whether the folder is end-to-end encrypted.
    fn encrypted(&self, folder: &str) -> Result<bool>;

    /// How many folders are encrypted (for the metrics).
    fn encrypted_count(&self) -> usize;

    /// Replaces the folder's wrapped keys if their generation is `expected` (0: the folder is
    /// plain and empty, and becomes encrypted); returns the new record, generation + 1.
    fn set_keys(
        &self,
        folder: &str,
        expected: u64,
        wrapped: Vec<pb::WrappedKey>,
    ) -> Result<pb::FolderKeys>;

    /// The path's current entry.
    fn current(&self, folder: &str, path: &SyncPath) -> Result<Option<Entry>>;

    /// Group commit: each `(entry, base_version)` decided by [`decide`] in order (a later commit
    /// of the same path sees the earlier one), assigned version, seq (dense, in order) and commit
    /// time; durable before it returns. If a transaction fails, the outcomes of the commits before
    /// it (which took effect) come back with the error; the commits after it were not tried. The
    /// entries were checked for a folder that is `encrypted` (or plain): a transaction that finds
    /// it otherwise fails with [`made_encrypted`] and stores nothing.
    fn commit_batch_checked(
        &self,
        folder: &str,
        commits: Vec<(Entry, u64)>,
        encrypted: bool,
    ) -> Result<(Vec<CommitOutcome>, Option<Error>)>;

    /// [`FolderMeta::commit_batch_checked`] for the folder as it is now.
    fn commit_batch(
        &self,
        folder: &str,
        commits: Vec<(Entry, u64)>,
    ) -> Result<(Vec<CommitOutcome>, Option<Error>)> {
        let encrypted = self.encrypted(folder)?;
        self.commit_batch_checked(folder, commits, encrypted)
    }

    /// One commit: see [`FolderMeta::commit_batch`].
    fn commit(&self, folder: &str, entry: Entry, base_version: u64) -> Result<CommitOutcome> {
        let (mut outcomes, failed) = self.commit_batch(folder, vec![(entry, base_version)])?;
        match (outcomes.pop(), failed) {
            (Some(outcome), None) => Ok(outcome),
            (_, Some(e)) => Err(e),
            (None, None) => Err(Error::Metadata("a commit of one gave no outcome".into())),
        }
    }

    /// The changes after `cursor` and the head they bring the caller to: within
    /// [`crate::folders::JOURNAL_SCAN_LIMIT`] of the head the latest entry of each path changed,
    /// in seq order ([`Backlog::Compacted`]); from further behind, [`Backlog::Scan`] (the caller
    /// pages with [`FolderMeta::scan_page`]). [`Error::CursorAhead`] for a cursor past the head.
    fn backlog(&self, folder: &str, cursor: u64) -> Result<(Backlog, u64)>;

    /// One page of a [`Backlog::Scan`]: of the next `limit` current entries after the path key
    /// `after` (the path's UTF-8 bytes; from the first with `None`), those with `cursor < seq <=
    /// head`, in path order; and the key to continue after, `None` at the end.
    fn scan_page(
        &self,
        folder: &str,
        cursor: u64,
        head: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>)>;

    /// The retained versions of a path, newest first, at most `max`; and whether there are more.
    fn history(&self, folder: &str, path: &SyncPath, max: usize) -> Result<(Vec<Entry>, bool)>;

    /// One retained version of a path.
    fn version(&self, folder: &str, path: &SyncPath, version: u64) -> Result<Option<Entry>>;

    /// Every current entry of a folder.
    fn current_entries(&self, folder: &str) -> Result<Vec<Entry>>;

    /// Drops history versions that are neither among the newest `keep_versions` of their path
    /// nor younger than `keep_ns`, nor current; calls `keep` with each kept one. Returns (kept,
    /// pruned); with `dry_run` nothing is deleted.
    fn prune_history(
        &self,
        folder: &str,
        keep_versions: usize,
        keep_ns: i64,
        dry_run: bool,
        keep: &mut dyn FnMut(&Entry),
    ) -> Result<(u64, u64)>;

    /// The folder's expiry horizon: the highest seq of a tombstone expired (0: none).
    fn expired_seq(&self, folder: &str) -> Result<u64>;

    /// Drops journal records that are not their path's latest commit; returns how many (would
    /// be, with `dry_run`).
    fn compact_journal(&self, folder: &str, dry_run: bool) -> Result<u64>;

    /// Forgets the tombstones committed before `cutoff_ns` (entry, journal record, history) and
    /// raises the expiry horizon to the highest seq forgotten, atomically. Returns (expired,
    /// horizon).
    fn expire_tombstones(&self, folder: &str, cutoff_ns: i64, dry_run: bool) -> Result<(u64, u64)>;
}

/// Users, their tokens (kept as hashes), folder owners and members.
pub trait UserMeta: Send + Sync + 'static {
    /// Whether any user token exists (then every request needs a token).
    fn any_tokens(&self) -> bool;

    /// Adds a user; [`Error::BadRequest`] if the name is taken or not allowed.
    fn add_user(&self, name: &str) -> Result<()>;

    /// Whether the user exists.
    fn user_exists(&self, name: &str) -> Result<bool>;

    /// Every user's name, sorted.
    fn user_names(&self) -> Result<Vec<String>>;

    /// Every token, without secrets.
    fn tokens(&self) -> Result<Vec<TokenInfo>>;

    /// Makes a token for `user`; returns it and its secret (shown once, stored only as a hash).
    fn create_token(
        &self,
        user: &str,
        read_only: bool,
        folder: Option<&str>,
    ) -> Result<(TokenInfo, String)>;

    /// Revokes a token by id; whether it existed.
    fn revoke_token(&self, id: &str) -> Result<bool>;

    /// The token a secret belongs to.
    fn authenticate(&self, token: &str) -> Result<Option<TokenInfo>>;

    /// Whether the token with this id still exists.
    fn token_live(&self, id: &str) -> Result<bool>;

    /// The folder's owner.
    fn owner(&self, folder: &str) -> Result<Option<String>>;

    /// Makes `user` the owner of a folder nobody owns; returns the owner (the existing one if
    /// another user got there first).
    fn claim(&self, folder: &str, user: &str) -> Result<String>;

    /// Shares the folder with a user (read-only or read-write).
    fn share(&self, folder: &str, user: &str, read_only: bool) -> Result<()>;

    /// Ends a share; whether there was one.
    fn unshare(&self, folder: &str, user: &str) -> Result<bool>;

    /// The folder's members and whether each is read-only, by name.
    fn members(&self, folder: &str) -> Result<Vec<(String, bool)>>;

    /// What the user may do in the folder.
    fn level(&self, folder: &str, user: &str) -> Result<Level>;

    /// The folders a user owns or is a member of, with the role's name.
    fn folders_of(&self, user: &str) -> Result<Vec<(String, &'static str)>>;
}

/// Per-folder dedup scopes: which chunks and manifests a folder can reach (see
/// [`crate::scope`]).
pub trait ScopeMeta: Send + Sync + 'static {
    /// Adds chunks to the folder's scope.
    fn add_chunks(&self, folder: &str, ids: &[ChunkId]) -> Result<()>;

    /// Adds a manifest to the folder's scope, and its chunks when `with_chunks`.
    fn add_manifest(&self, folder: &str, m: &Manifest, with_chunks: bool) -> Result<()>;

    /// Whether the chunk is in the folder's scope.
    fn has_chunk(&self, folder: &str, id: &ChunkId) -> Result<bool>;

    /// Whether the manifest is in the folder's scope.
    fn has_manifest(&self, folder: &str, id: &ManifestId) -> Result<bool>;

    /// Those of `ids` that are not in the folder's scope, in order.
    fn outside(&self, folder: &str, ids: &[ChunkId]) -> Result<Vec<ChunkId>>;

    /// What `MissingChunks` answers: the ids not both in the folder's scope and in `store`, each
    /// once, in request order.
    fn missing(
        &self,
        store: &dyn ChunkStore,
        folder: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>>;

    /// Drops scope entries whose chunk or manifest `store` no longer holds; returns how many.
    fn prune(&self, store: &dyn ChunkStore) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbsync_proto::EntryKind;

    fn entry(version: u64, deleted: bool) -> Entry {
        let path = SyncPath::new("a.txt").unwrap();
        let mut e = Entry::tombstone(path, EntryKind::File, "dev");
        e.version = version;
        e.deleted = deleted;
        e
    }

    #[test]
    fn a_commit_lands_on_its_base_and_creations_land_on_nothing_or_a_plain_tombstone() {
        let new = entry(0, false);
        assert_eq!(decide(None, &new, 0, false), Ok(1));
        assert_eq!(decide(Some(&entry(3, false)), &new, 3, false), Ok(4));
        assert_eq!(decide(Some(&entry(3, true)), &new, 0, false), Ok(4));
        // Encrypted: the entry was sealed for version 1.
        assert_eq!(
            decide(Some(&entry(3, true)), &new, 0, true),
            Err(entry(3, true))
        );
        assert_eq!(
            decide(Some(&entry(3, false)), &new, 2, false),
            Err(entry(3, false))
        );
        let never = decide(None, &new, 5, false).unwrap_err();
        assert_eq!((never.version, never.deleted), (0, true));
    }
}
