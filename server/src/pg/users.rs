//! [`UserMeta`] in PostgreSQL: tables `users`, `tokens` (the BLAKE3 of each secret, never the
//! secret), `owners` and `members`. Behaves as the sled backend ([`crate::users`]) does: the
//! same token format and checks, the same messages.

use rand::RngCore;

use super::Db;
use crate::error::{Error, Result};
use crate::folders::check_folder_name;
use crate::meta::UserMeta;
use crate::users::{Level, TokenInfo, check_user_name, hex, now_ns, split_token};

/// The users, tokens and memberships of a PostgreSQL database.
pub struct PgUsers {
    db: Db,
}

fn role(read_only: bool) -> &'static str {
    if read_only { "read-only" } else { "read-write" }
}

impl PgUsers {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
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

const TOKEN_COLUMNS: &str = "id, user_name, read_only, folder, created_ns";

fn token_info(r: &postgres::Row) -> TokenInfo {
    TokenInfo {
        id: r.get(0),
        user: r.get(1),
        read_only: r.get(2),
        folder: r.get(3),
        created_ns: r.get(4),
    }
}

impl UserMeta for PgUsers {
    fn any_tokens(&self) -> bool {
        let any = self.db.conn().and_then(|mut c| {
            c.query_one("SELECT EXISTS (SELECT 1 FROM tokens)", &[])
                .map_err(self.db.fail("looking for tokens"))
        });
        match any {
            Ok(r) => r.get(0),
            Err(e) => {
                // Never let a database error turn token checks off.
                tracing::warn!("{e}; requiring tokens meanwhile");
                true
            }
        }
    }

    fn add_user(&self, name: &str) -> Result<()> {
        check_user_name(name)?;
        let n = self
            .db
            .conn()?
            .execute(
                "INSERT INTO users (name, created_ns) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &now_ns()],
            )
            .map_err(self.db.fail("adding a user"))?;
        if n == 0 {
            return Err(Error::BadRequest(format!("user {name} exists already")));
        }
        Ok(())
    }

    fn user_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .db
            .conn()?
            .query_opt("SELECT 1 FROM users WHERE name = $1", &[&name])
            .map_err(self.db.fail("looking up a user"))?
            .is_some())
    }

    fn user_names(&self) -> Result<Vec<String>> {
        let rows = self
            .db
            .conn()?
            .query("SELECT name FROM users ORDER BY name", &[])
            .map_err(self.db.fail("listing the users"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = self
            .db
            .conn()?
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"),
                &[],
            )
            .map_err(self.db.fail("listing the tokens"))?;
        Ok(rows.iter().map(token_info).collect())
    }

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
        let hash = blake3::hash(&secret).as_bytes().to_vec();
        let created_ns = now_ns();
        let mut c = self.db.conn()?;
        loop {
            let mut id = [0u8; 4];
            rand::rng().fill_bytes(&mut id);
            let id = hex(&id);
            let made = c
                .execute(
                    "INSERT INTO tokens (id, hash, user_name, read_only, folder, created_ns) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &[&id, &hash, &user, &read_only, &folder, &created_ns],
                )
                .map_err(self.db.fail("making a token"))?;
            if made == 1 {
                let token = format!("lbs_{id}_{}", hex(&secret));
                let info = TokenInfo {
                    id,
                    user: user.to_owned(),
                    read_only,
                    folder: folder.map(str::to_owned),
                    created_ns,
                };
                return Ok((info, token));
            }
        }
    }

    fn revoke_token(&self, id: &str) -> Result<bool> {
        let n = self
            .db
            .conn()?
            .execute("DELETE FROM tokens WHERE id = $1", &[&id])
            .map_err(self.db.fail("revoking a token"))?;
        Ok(n > 0)
    }

    fn authenticate(&self, token: &str) -> Result<Option<TokenInfo>> {
        let Some((id, secret)) = split_token(token) else {
            return Ok(None);
        };
        let Some(r) = self
            .db
            .conn()?
            .query_opt(
                &format!(
                    "SELECT {TOKEN_COLUMNS}, hash, \
                     EXISTS (SELECT 1 FROM users WHERE name = user_name) \
                     FROM tokens WHERE id = $1"
                ),
                &[&id],
            )
            .map_err(self.db.fail("checking a token"))?
        else {
            return Ok(None);
        };
        let hash: &[u8] = r.get(5);
        let Ok(stored) = <[u8; 32]>::try_from(hash) else {
            return Err(Error::Metadata(format!("token {id} has no sound hash")));
        };
        // `blake3::Hash`'s equality is constant-time.
        if blake3::Hash::from(stored) != blake3::hash(&secret) {
            return Ok(None);
        }
        Ok(r.get::<_, bool>(6).then(|| token_info(&r)))
    }

    fn token_live(&self, id: &str) -> Result<bool> {
        Ok(self
            .db
            .conn()?
            .query_opt("SELECT 1 FROM tokens WHERE id = $1", &[&id])
            .map_err(self.db.fail("looking up a token"))?
            .is_some())
    }

    fn owner(&self, folder: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .conn()?
            .query_opt("SELECT user_name FROM owners WHERE folder = $1", &[&folder])
            .map_err(self.db.fail("reading a folder's owner"))?
            .map(|r| r.get(0)))
    }

    fn claim(&self, folder: &str, user: &str) -> Result<String> {
        let mut c = self.db.conn()?;
        // Owners are never replaced: whoever inserted first is the owner the select sees.
        c.execute(
            "INSERT INTO owners (folder, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&folder, &user],
        )
        .map_err(self.db.fail("claiming a folder"))?;
        let r = c
            .query_one("SELECT user_name FROM owners WHERE folder = $1", &[&folder])
            .map_err(self.db.fail("reading a folder's owner"))?;
        Ok(r.get(0))
    }

    fn share(&self, folder: &str, user: &str, read_only: bool) -> Result<()> {
        check_folder_name(folder)?;
        self.require_user(user)?;
        if self.owner(folder)?.as_deref() == Some(user) {
            return Err(Error::BadRequest(format!(
                "{user} owns folder {folder}: an owner may always read and write it"
            )));
        }
        self.db
            .conn()?
            .execute(
                "INSERT INTO members (folder, user_name, read_only) VALUES ($1, $2, $3) \
                 ON CONFLICT (folder, user_name) DO UPDATE SET read_only = EXCLUDED.read_only",
                &[&folder, &user, &read_only],
            )
            .map_err(self.db.fail("sharing a folder"))?;
        Ok(())
    }

    fn unshare(&self, folder: &str, user: &str) -> Result<bool> {
        let n = self
            .db
            .conn()?
            .execute(
                "DELETE FROM members WHERE folder = $1 AND user_name = $2",
                &[&folder, &user],
            )
            .map_err(self.db.fail("ending a share"))?;
        Ok(n > 0)
    }

    fn members(&self, folder: &str) -> Result<Vec<(String, bool)>> {
        let rows = self
            .db
            .conn()?
            .query(
                "SELECT user_name, read_only FROM members WHERE folder = $1 ORDER BY user_name",
                &[&folder],
            )
            .map_err(self.db.fail("listing a folder's members"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn level(&self, folder: &str, user: &str) -> Result<Level> {
        let r = self
            .db
            .conn()?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM owners WHERE folder = $1 AND user_name = $2), \
                 (SELECT read_only FROM members WHERE folder = $1 AND user_name = $2)",
                &[&folder, &user],
            )
            .map_err(self.db.fail("reading a user's access"))?;
        Ok(match (r.get::<_, bool>(0), r.get::<_, Option<bool>>(1)) {
            (true, _) => Level::Write,
            (false, Some(true)) => Level::Read,
            (false, Some(false)) => Level::Write,
            (false, None) => Level::None,
        })
    }

    fn folders_of(&self, user: &str) -> Result<Vec<(String, &'static str)>> {
        let mut c = self.db.conn()?;
        let mut out: Vec<(String, &'static str)> = c
            .query("SELECT folder FROM owners WHERE user_name = $1", &[&user])
            .map_err(self.db.fail("listing a user's folders"))?
            .iter()
            .map(|r| (r.get(0), "owner"))
            .collect();
        out.extend(
            c.query(
                "SELECT folder, read_only FROM members WHERE user_name = $1",
                &[&user],
            )
            .map_err(self.db.fail("listing a user's shares"))?
            .iter()
            .map(|r| (r.get(0), role(r.get(1)))),
        );
        out.sort();
        Ok(out)
    }
}
