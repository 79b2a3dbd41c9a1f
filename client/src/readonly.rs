//! A folder this device may only read (a read-only token or share): nothing is sent, and what
//! changed here stays here. A synced file edited here is moved to a conflicted copy that only
//! this device keeps, and the server's version is put back; a path deleted here comes back; a
//! new file stays where it is, unsent. Each is said in words.

use lbsync_proto::SyncPath;
use tracing::{debug, info};

use crate::engine::Syncer;
use crate::local::fingerprint;
use crate::state::Kind;

impl Syncer {
    /// Instead of sending what changed at `paths` (uploads and deletions), keeps it here (see
    /// the module docs). False if the server went away meanwhile.
    pub(crate) async fn keep_local(&mut self, mut paths: Vec<SyncPath>) -> bool {
        // Parents first: a directory deleted here comes back before what it held.
        paths.sort();
        paths.dedup();
        let folder = self.remote.folder.clone();
        let mut remote_ok = true;
        for path in paths {
            // A deletion here may be a parent that became a symlink: never look or move
            // through it.
            let local = match crate::confine::check(&self.root, &path) {
                Ok(local) => local,
                Err(e) => {
                    self.problem(&path, &e, 0);
                    continue;
                }
            };
            let here = fingerprint(&local);
            if !self.state.state.files.contains_key(path.as_str()) {
                self.report.local_only += 1;
                debug!("{path} stays on this device only: {folder} is read-only here");
                continue;
            }
            // A directory's own change (its mode) is this device's business.
            if here.as_ref().is_some_and(|f| f.kind == Kind::Dir)
                && self
                    .state
                    .state
                    .files
                    .get(path.as_str())
                    .is_some_and(|s| s.local.kind == Kind::Dir)
            {
                continue;
            }
            let newest = match self.remote.history(&path).await {
                Ok(versions) => versions.into_iter().max_by_key(|e| e.version),
                Err(e) if e.is_offline() => {
                    self.pending(&path, &e);
                    remote_ok = false;
                    continue;
                }
                Err(e) => {
                    self.problem(&path, &e, 0);
                    continue;
                }
            };
            let Some(r) = newest.filter(|r| !r.deleted) else {
                // Gone from the server too: nothing to put back, and what is here stays unsent.
                self.state.state.files.remove(path.as_str());
                self.report.local_only += 1;
                continue;
            };
            if here.is_some() {
                match self.conflict_copy_of(&path) {
                    Ok(copy) => info!(
                        "{path} was changed here, but {folder} is read-only for this device: \
                         your version is kept on this device only, as {copy}, and the server's \
                         is put back"
                    ),
                    Err(e) => {
                        self.problem(&path, &e, r.version);
                        continue;
                    }
                }
            } else {
                info!(
                    "{path} was deleted here, but {folder} is read-only for this device: the \
                     server's version is put back"
                );
            }
            remote_ok &= self.apply(&r).await;
        }
        remote_ok
    }
}
