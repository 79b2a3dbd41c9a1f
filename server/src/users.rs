//! Users, their tokens, and who may use which folder, in the store's sled database.
//!
//! Trees:
//! - `users`: name → a `UserRecord` (encoded protobuf, additive);
//! - `tokens`: token id → a `TokenRecord`: BLAKE3 of the token's secret, user, read-only flag,
//!   optional folder restriction, creation time;
//! - `owners`: folder → the user who created it (folders made by an admin token, or before users
//!   existed, have none: only the admin uses them until shared);
//! - `members`: folder, NUL, user → one byte, 1 for read-only, 0 for read-write.
//!
//! A token reads `lbs_<id>_<secret>`: the id (8 lowercase hex digits) finds the record, the secret
//! (32 random bytes from the OS's generator through `rand`, as 64 hex digits) is checked against
//! the stored hash in constant time (`blake3::Hash`'s equality). The secret is shown once, when the
//! token is made; the store keeps only its hash.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use rand::RngCore;

use crate::error::{Error, Result};
use crate::folders::check_folder_name;
use crate::meta::UserMeta;

/// What the `users` tree holds per user.
#[derive(Clone, PartialEq, prost::Message)]
struct UserRecord {
    #[prost(int64, tag = "1")]
    created_ns: i64,
}

/// What the `tokens` tree holds per token.
#[derive(Clone, PartialEq, prost::Message)]
struct TokenRecord {
    /// BLAKE3 of the 32-byte secret.
    #[prost(bytes = "vec", tag = "1")]
    hash: Vec<u8>,
    #[prost(string, tag = "2")]
    user: String,
    #[prost(bool, tag = "3")]
    read_only: bool,
    #[prost(string, optional, tag = "4")]
    folder: Option<String>,
    #[prost(int64, tag = "5")]
    created_ns: i64,
}

/// A token as listed: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's id (8 hex digits), as `token revoke` takes it.
    pub id: String,
    /// Its user.
    pub user: String,
    /// It may read, never write.
    pub read_only: bool,
    /// It may use only this folder.
    pub folder: Option<String>,
    /// When it was made, Unix nanoseconds.
    pub created_ns: i64,
}

/// How much a user may do in a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing.
    None,
    /// Read: Handshake, Changes, History, MissingChunks, GetManifest, GetChunks.
    Read,
    /// Read and write: also PutChunks, Commit, CommitBatch, Restore.
    Write,
}

/// The users and memberships of one store.
#[derive(Clone)]
pub struct SledUsers {
    users: sled::Tree,
    tokens: sled::Tree,
    owners: sled::Tree,
    members: sled::Tree,
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Checks a user name: 1–64 characters of `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "user name {name:?} is not allowed: use 1-64 letters, digits, '.', '_' or '-', \
             starting with a letter or digit"
        )))
    }
}

fn member_key(folder: &str, user: &str) -> Vec<u8> {
    let mut k = folder.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Splits a token into its id and secret; `None` when it is not of the form `lbs_<id>_<secret>`.
pub(crate) fn split_token(token: &str) -> Option<(&str, [u8; 32])> {
    let (id, secret) = token.strip_prefix("lbs_")?.split_once('_')?;
    Some((id, unhex32(secret)?))
}

fn decode_token(id: &str, bytes: &[u8]) -> Result<(TokenInfo, Vec<u8>)> {
    let r = TokenRecord::decode(bytes)
        .map_err(|e| Error::Metadata(format!("token {id} does not decode: {e}")))?;
    Ok((
        TokenInfo {
            id: id.to_owned(),
            user: r.user,
            read_only: r.read_only,
            folder: r.folder,
            created_ns: r.created_ns,
        },
        r.hash,
    ))
}

impl SledUsers {
    /// The users kept in `db`.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            users: db.open_tree("users")?,
            tokens: db.open_tree("tokens")?,
            owners: db.open_tree("owners")?,
            members: db.open_tree("members")?,
        })
    }

    fn require_user(&self, name: &str) -> Result<()> {
        if self.user_exists(name)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no user {name:?}: add one with `lbsync-server user add {name}`"
            )))
        }
    }
}

impl UserMeta for SledUsers {
    /// Whether any user token exists: then every request needs a token.
    fn any_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Adds a user; an error if one of that name exists.
    fn add_user(&self, name: &str) -> Result<()> {
        check_user_name(name)?;
        let rec = UserRecord {
            created_ns: now_ns(),
        };
        match self
            .users
            .compare_and_swap(name, None::<&[u8]>, Some(rec.encode_to_vec()))?
        {
            Ok(()) => {
                self.users.flush()?;
                Ok(())
            }
            Err(_) => Err(Error::BadRequest(format!("user {name} exists already"))),
        }
    }

    /// Whether the user exists.
    fn user_exists(&self, name: &str) -> Result<bool> {
        Ok(self.users.contains_key(name)?)
    }

    /// Every user's name, sorted.
    fn user_names(&self) -> Result<Vec<String>> {
        self.users
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Every token, sorted by id.
    fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok(decode_token(&String::from_utf8_lossy(&k), &v)?.0)
            })
            .collect()
    }

    /// Makes a token for `user`; returns it as listed and the token itself, which is shown now
    /// and never again.
    fn create_token(
        &self,
        user: &str,
        read_only: bool,
        folder: Option<&str>,
    ) -> Result<(TokenInfo, String)> {
        self.require_user(user)?;
        if let Some(f) = folder {
            check_folder_name(f)?;
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let rec = TokenRecord {
            hash: blake3::hash(&secret).as_bytes().to_vec(),
            user: user.to_owned(),
            read_only,
            folder: folder.map(str::to_owned),
            created_ns: now_ns(),
        };
        loop {
            let mut id = [0u8; 4];
            rand::rng().fill_bytes(&mut id);
            let id = hex(&id);
            let taken = self.tokens.compare_and_swap(
                id.as_bytes(),
                None::<&[u8]>,
                Some(rec.encode_to_vec()),
            )?;
            if taken.is_ok() {
                self.tokens.flush()?;
                let token = format!("lbs_{id}_{}", hex(&secret));
                return Ok((decode_token(&id, &rec.encode_to_vec())?.0, token));
            }
        }
    }

    /// Revokes a token; false if there is none of that id.
    fn revoke_token(&self, id: &str) -> Result<bool> {
        let gone = self.tokens.remove(id)?.is_some();
        self.tokens.flush()?;
        Ok(gone)
    }

    /// The token's record, if `token` is a live token of an existing user.
    fn authenticate(&self, token: &str) -> Result<Option<TokenInfo>> {
        let Some((id, secret)) = split_token(token) else {
            return Ok(None);
        };
        let Some(v) = self.tokens.get(id)? else {
            return Ok(None);
        };
        let (info, hash) = decode_token(id, &v)?;
        let Ok(stored) = <[u8; 32]>::try_from(hash.as_slice()) else {
            return Err(Error::Metadata(format!("token {id} has no sound hash")));
        };
        // `blake3::Hash`'s equality is constant-time.
        if blake3::Hash::from(stored) != blake3::hash(&secret) {
            return Ok(None);
        }
        Ok(self.user_exists(&info.user)?.then_some(info))
    }

    /// Whether the token of this id still exists (it was not revoked).
    fn token_live(&self, id: &str) -> Result<bool> {
        Ok(self.tokens.contains_key(id)?)
    }

    /// The folder's owner, if it has one.
    fn owner(&self, folder: &str) -> Result<Option<String>> {
        Ok(self
            .owners
            .get(folder)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Makes `user` the owner of `folder` unless it has one; returns the owner after.
    fn claim(&self, folder: &str, user: &str) -> Result<String> {
        match self
            .owners
            .compare_and_swap(folder, None::<&[u8]>, Some(user.as_bytes()))?
        {
            Ok(()) => {
                self.owners.flush()?;
                Ok(user.to_owned())
            }
            Err(e) => Ok(e
                .current
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()),
        }
    }

    /// Lets `user` use `folder` (read-only or read-write), replacing an earlier share.
    fn share(&self, folder: &str, user: &str, read_only: bool) -> Result<()> {
        check_folder_name(folder)?;
        self.require_user(user)?;
        if self.owner(folder)?.as_deref() == Some(user) {
            return Err(Error::BadRequest(format!(
                "{user} owns folder {folder}: an owner may always read and write it"
            )));
        }
        self.members
            .insert(member_key(folder, user), &[u8::from(read_only)])?;
        self.members.flush()?;
        Ok(())
    }

    /// Stops sharing `folder` with `user`; false if it was not shared with them.
    fn unshare(&self, folder: &str, user: &str) -> Result<bool> {
        let gone = self.members.remove(member_key(folder, user))?.is_some();
        self.members.flush()?;
        Ok(gone)
    }

    /// The folder's members and whether each is read-only.
    fn members(&self, folder: &str) -> Result<Vec<(String, bool)>> {
        let mut prefix = folder.as_bytes().to_vec();
        prefix.push(0);
        self.members
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let user = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((user, v.first() == Some(&1)))
            })
            .collect()
    }

    /// How much `user` may do in `folder` as owner or member (a token's own limits aside).
    fn level(&self, folder: &str, user: &str) -> Result<Level> {
        if self.owner(folder)?.as_deref() == Some(user) {
            return Ok(Level::Write);
        }
        Ok(match self.members.get(member_key(folder, user))? {
            Some(v) if v.first() == Some(&1) => Level::Read,
            Some(_) => Level::Write,
            None => Level::None,
        })
    }

    /// Every (folder, role) of a user: "owner", "read-write" or "read-only".
    fn folders_of(&self, user: &str) -> Result<Vec<(String, &'static str)>> {
        let mut out = Vec::new();
        for kv in self.owners.iter() {
            let (k, v) = kv?;
            if &*v == user.as_bytes() {
                out.push((String::from_utf8_lossy(&k).into_owned(), "owner"));
            }
        }
        for kv in self.members.iter() {
            let (k, v) = kv?;
            let Some(split) = k.iter().position(|&b| b == 0) else {
                continue;
            };
            if &k[split + 1..] == user.as_bytes() {
                let role = if v.first() == Some(&1) {
                    "read-only"
                } else {
                    "read-write"
                };
                out.push((String::from_utf8_lossy(&k[..split]).into_owned(), role));
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> (tempfile::TempDir, SledUsers) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, SledUsers::open(&db).unwrap())
    }

    #[test]
    fn tokens_are_checked_by_hash_and_die_when_revoked() {
        let (_d, u) = users();
        assert!(!u.any_tokens());
        assert!(
            u.create_token("alice", false, None).is_err(),
            "no such user"
        );
        u.add_user("alice").unwrap();
        assert!(u.add_user("alice").is_err(), "a second alice");
        assert!(u.add_user("../x").is_err());
        let (info, token) = u.create_token("alice", true, Some("docs")).unwrap();
        assert!(u.any_tokens());
        assert_eq!(info.id.len(), 8);
        assert!(token.starts_with(&format!("lbs_{}_", info.id)));
        let got = u.authenticate(&token).unwrap().unwrap();
        assert_eq!(got, info);
        assert!(got.read_only && got.folder.as_deref() == Some("docs"));
        // The store holds no secret: only its hash.
        let raw = u.tokens.get(&info.id).unwrap().unwrap();
        let secret = token.rsplit('_').next().unwrap();
        assert!(
            !raw.windows(8)
                .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
        );
        // A wrong secret, a malformed token, an unknown id.
        let mut wrong = token.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        for bad in [wrong.as_str(), "lbs_", "garbage", "lbs_00000000_00"] {
            assert!(u.authenticate(bad).unwrap().is_none(), "{bad}");
        }
        assert_eq!(u.tokens().unwrap(), std::slice::from_ref(&info));
        assert!(u.revoke_token(&info.id).unwrap());
        assert!(!u.revoke_token(&info.id).unwrap());
        assert!(u.authenticate(&token).unwrap().is_none());
        assert!(!u.token_live(&info.id).unwrap());
    }

    #[test]
    fn owners_and_members_set_the_level() {
        let (_d, u) = users();
        for n in ["alice", "bob", "carol"] {
            u.add_user(n).unwrap();
        }
        assert_eq!(u.claim("a", "alice").unwrap(), "alice");
        assert_eq!(
            u.claim("a", "bob").unwrap(),
            "alice",
            "the first claim wins"
        );
        assert_eq!(u.level("a", "alice").unwrap(), Level::Write);
        assert_eq!(u.level("a", "bob").unwrap(), Level::None);
        u.share("a", "bob", true).unwrap();
        u.share("a", "carol", false).unwrap();
        assert!(u.share("a", "alice", true).is_err(), "the owner");
        assert!(u.share("a", "dave", true).is_err(), "no such user");
        assert_eq!(u.level("a", "bob").unwrap(), Level::Read);
        assert_eq!(u.level("a", "carol").unwrap(), Level::Write);
        assert_eq!(
            u.members("a").unwrap(),
            [("bob".to_owned(), true), ("carol".to_owned(), false)]
        );
        assert_eq!(u.folders_of("bob").unwrap(), [("a".into(), "read-only")]);
        assert!(u.unshare("a", "bob").unwrap());
        assert!(!u.unshare("a", "bob").unwrap());
        assert_eq!(u.level("a", "bob").unwrap(), Level::None);
        // A folder named like a prefix of another is not confused with it.
        assert_eq!(u.level("a2", "carol").unwrap(), Level::None);
    }
}
