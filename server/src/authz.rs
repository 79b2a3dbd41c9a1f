//! Who is calling and what they may do in the folder a request names; the log of refusals.
//!
//! A request's token is one of: none, on a server with no token file and no user tokens
//! ([`Principal::Open`]: everything allowed, as before users existed); a line of `--token-file`
//! ([`Principal::Admin`]: every folder, the whole store); a user's token ([`Principal::User`]:
//! the folders the user owns or is a member of, limited further by the token's own folder and
//! read-only flag, and chunk and manifest reads limited to the folder's dedup scope, see
//! [`crate::scope`]). Anything else is `UNAUTHENTICATED`; a folder the caller may not use, or a
//! write with read-only access, is `PERMISSION_DENIED`. Both are refused before anything is read
//! or changed, and logged with the peer, user and folder, at most one line per peer address every
//! [`LOG_EVERY`] (the rest are counted and the count is logged with the next line).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::auth::Tokens;
use crate::error::{Error, Result, status};
use crate::folders::check_folder_name;
use crate::meta::{Folders, Users};
use crate::users::{Level, TokenInfo};

/// A peer's refusals are logged at most once this often.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Who a request comes from.
#[derive(Clone, Debug)]
pub enum Principal {
    /// No token needed on this server: everything is allowed.
    Open,
    /// A token of the server's token file: every folder, the whole store.
    Admin,
    /// A user's token.
    User(TokenInfo),
}

/// What a request needs in its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// To read it.
    Read,
    /// To change it.
    Write,
    /// The handshake: read an existing folder, or create one (which needs write access and makes
    /// the caller its owner).
    Open,
}

/// What a request carries about its sender, taken before the request is consumed.
pub struct Who {
    token: Option<String>,
    header: bool,
    peer: Option<SocketAddr>,
}

impl Who {
    /// The bearer token and peer address of `req`.
    pub fn of<T>(req: &Request<T>) -> Self {
        let header = req.metadata().get("authorization");
        Self {
            token: header
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned()),
            header: header.is_some(),
            peer: req.remote_addr(),
        }
    }
}

/// An authorized caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// From where.
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// The folder whose scope bounds this caller's chunk and manifest reads and references;
    /// `None` when the caller sees the whole store (admin, or no tokens on this server).
    pub fn scope<'a>(&self, folder: &'a str) -> Option<&'a str> {
        matches!(self.principal, Principal::User(_)).then_some(folder)
    }

    /// The caller's name for the log.
    pub fn name(&self) -> String {
        principal_name(&self.principal)
    }
}

fn principal_name(p: &Principal) -> String {
    match p {
        Principal::Open => "anyone".into(),
        Principal::Admin => "admin".into(),
        Principal::User(t) => format!("{} (token {})", t.user, t.id),
    }
}

/// Refusals logged per peer address: when the last line was written, and how many were refused
/// since without a line.
#[derive(Default)]
struct DenyLog(Mutex<HashMap<IpAddr, (Instant, u64)>>);

impl DenyLog {
    fn note(&self, peer: Option<SocketAddr>, line: impl FnOnce() -> String) {
        let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        let now = Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 4096 {
            seen.retain(|_, (at, _)| now.duration_since(*at) < LOG_EVERY);
        }
        match seen.get_mut(&ip) {
            Some((at, n)) if now.duration_since(*at) < LOG_EVERY => *n += 1,
            slot => {
                let more = slot.map_or(0, |(_, n)| *n);
                let more = if more > 0 {
                    format!(" (and {more} more refused from {ip} before this)")
                } else {
                    String::new()
                };
                let line = line();
                tracing::warn!("{line}{more}");
                seen.insert(ip, (now, 0));
            }
        }
    }
}

/// Authorization over one store's users and folders.
#[derive(Clone)]
pub struct Authz {
    users: Users,
    folders: Folders,
    admin: Option<Tokens>,
    log: Arc<DenyLog>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Metadata(format!("a worker task failed: {e}")))?
}

impl Authz {
    /// Authorization with these users and folders, and `admin` the token file's tokens.
    pub fn new(users: Users, folders: Folders, admin: Option<Tokens>) -> Self {
        Self {
            users,
            folders,
            admin,
            log: Arc::default(),
        }
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        self.admin.is_some() || self.users.any_tokens()
    }

    fn identify(&self, who: &Who) -> Result<Result<Principal, Status>> {
        let Some(token) = &who.token else {
            if !self.required() {
                return Ok(Ok(Principal::Open));
            }
            return Ok(Err(Status::unauthenticated(if who.header {
                "the authorization header is not `Bearer <token>`: send the token as the \
                 server's admin gave it"
            } else {
                "this server needs a token: pass --token-file FILE holding the token the \
                 server's admin made for you (`lbsync-server token create --user NAME`)"
            })));
        };
        if self.admin.as_ref().is_some_and(|t| t.accepts(token)) {
            return Ok(Ok(Principal::Admin));
        }
        Ok(match self.users.authenticate(token)? {
            Some(t) => Ok(Principal::User(t)),
            None => Err(Status::unauthenticated(
                "unknown or revoked token: ask the server's admin for a new one \
                 (`lbsync-server token create --user NAME`) and pass it with --token-file",
            )),
        })
    }

    /// Whether `p` may do what `need` says in `folder` (empty: no folder named). For a user's
    /// handshake of a folder that does not exist, makes the user its owner.
    fn check(&self, p: &Principal, folder: &str, need: Need) -> Result<Result<(), Status>> {
        if !folder.is_empty() {
            check_folder_name(folder)?;
        }
        let Principal::User(t) = p else {
            return Ok(Ok(()));
        };
        let user = &t.user;
        if folder.is_empty() {
            return Ok(Err(Status::permission_denied(
                "this request names no folder, and a user's token reads and uploads chunks only \
                 through a folder: upgrade lbsync-client",
            )));
        }
        if let Some(only) = t.folder.as_deref().filter(|f| *f != folder) {
            return Ok(Err(Status::permission_denied(format!(
                "token {} is limited to folder {only}, not {folder}: use a token made for \
                 {folder} (`lbsync-server token create --user {user} --folder {folder}`)",
                t.id
            ))));
        }
        let exists = self.folders.head(folder).is_ok();
        let mut level = self.users.level(folder, user)?;
        if need == Need::Open && !exists && level == Level::None && !t.read_only {
            // A new folder belongs to the user who creates it (the first claim wins a race).
            if self.users.claim(folder, user)? == *user {
                level = Level::Write;
            }
        }
        if level == Level::None {
            return Ok(Err(Status::permission_denied(format!(
                "user {user} may not use folder {folder}: it is neither theirs nor shared with \
                 them; ask its owner or the server's admin to run `lbsync-server share {folder} \
                 --with {user}`, or sync a folder of another name"
            ))));
        }
        let writes = need == Need::Write || (need == Need::Open && !exists);
        if writes && t.read_only {
            return Ok(Err(Status::permission_denied(format!(
                "token {} of {user} is read-only, and this request changes folder {folder}: \
                 nothing was changed; use a read-write token to make changes",
                t.id
            ))));
        }
        if writes && level == Level::Read {
            return Ok(Err(Status::permission_denied(format!(
                "folder {folder} is shared with {user} read-only, and this request changes it: \
                 nothing was changed; ask its owner for read-write access (`lbsync-server share \
                 {folder} --with {user}`)"
            ))));
        }
        Ok(Ok(()))
    }

    /// Whether `caller` may only read `folder` (a read-only token, or a read-only share): the
    /// handshake says so, and the client then sends nothing.
    pub fn read_only(&self, caller: &Caller, folder: &str) -> Result<bool> {
        let Principal::User(t) = &caller.principal else {
            return Ok(false);
        };
        Ok(t.read_only || self.users.level(folder, &t.user)? == Level::Read)
    }

    /// Identifies the sender of a request and checks it may do `need` in `folder`; a refusal is
    /// logged (rate-limited) and returned as the status to answer.
    pub async fn authorize(
        &self,
        who: Who,
        rpc: &'static str,
        folder: &str,
        need: Need,
    ) -> Result<Caller, Status> {
        let this = self.clone();
        let f = folder.to_owned();
        let peer = who.peer;
        let decided = blocking(move || {
            let p = match this.identify(&who)? {
                Ok(p) => p,
                Err(s) => return Ok(Err((None, s))),
            };
            Ok(match this.check(&p, &f, need)? {
                Ok(()) => Ok(p),
                Err(s) => Err((Some(p), s)),
            })
        })
        .await
        .map_err(|e| status(&e))?;
        match decided {
            Ok(principal) => Ok(Caller { principal, peer }),
            Err((p, s)) => Err(self.refused(peer, p.as_ref(), rpc, folder, s)),
        }
    }

    /// Identifies the sender of a request whose folder is not known yet (a PutChunks stream,
    /// before its first message); [`Authz::permit`] checks the folder then. A refusal is logged.
    pub async fn authenticate(&self, who: Who, rpc: &'static str) -> Result<Caller, Status> {
        let this = self.clone();
        let peer = who.peer;
        let identified = blocking(move || this.identify(&who))
            .await
            .map_err(|e| status(&e))?;
        match identified {
            Ok(principal) => Ok(Caller { principal, peer }),
            Err(s) => Err(self.refused(peer, None, rpc, "", s)),
        }
    }

    /// Checks that an identified caller may do `need` in `folder`. A refusal is logged.
    pub async fn permit(
        &self,
        caller: &Caller,
        rpc: &'static str,
        folder: &str,
        need: Need,
    ) -> Result<(), Status> {
        let this = self.clone();
        let (p, f) = (caller.principal.clone(), folder.to_owned());
        let decided = blocking(move || this.check(&p, &f, need))
            .await
            .map_err(|e| status(&e))?;
        decided.map_err(|s| self.refused(caller.peer, Some(&caller.principal), rpc, folder, s))
    }

    /// Checks again that `caller` may read `folder`: a revoked token is `UNAUTHENTICATED`, a
    /// folder no longer shared `PERMISSION_DENIED`. For long-lived streams.
    pub async fn recheck(
        &self,
        caller: &Caller,
        rpc: &'static str,
        folder: &str,
    ) -> Result<(), Status> {
        let Principal::User(t) = &caller.principal else {
            return Ok(());
        };
        let this = self.clone();
        let (p, f) = (caller.principal.clone(), folder.to_owned());
        let id = t.id.clone();
        let decided = blocking(move || {
            if !this.users.token_live(&id)? {
                return Ok(Err(Status::unauthenticated(format!(
                    "token {id} was revoked: ask the server's admin for a new one and pass it \
                     with --token-file"
                ))));
            }
            this.check(&p, &f, Need::Read)
        })
        .await
        .map_err(|e| status(&e))?;
        decided.map_err(|s| self.refused(caller.peer, Some(&caller.principal), rpc, folder, s))
    }

    /// Logs a refusal (rate-limited per peer) and returns its status.
    fn refused(
        &self,
        peer: Option<SocketAddr>,
        p: Option<&Principal>,
        rpc: &'static str,
        folder: &str,
        s: Status,
    ) -> Status {
        self.log.note(peer, || {
            format!(
                "refused {rpc} from {} by {} on folder {:?}: {:?}: {}",
                peer.map_or_else(|| "an unknown address".into(), |p| p.to_string()),
                p.map_or_else(|| "an unauthenticated caller".into(), principal_name),
                folder,
                s.code(),
                s.message()
            )
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_peer_per_period() {
        let log = DenyLog::default();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut lines = 0;
        for _ in 0..100 {
            log.note(Some(peer), || {
                lines += 1;
                String::new()
            });
        }
        assert_eq!(lines, 1);
        let seen = log.0.lock().unwrap();
        assert_eq!(seen[&peer.ip()].1, 99, "the rest are counted");
    }
}
