//! The token file's bearer tokens: admin tokens, which may use every folder (users' tokens are
//! in the store, see `users`; which token may do what is decided in `authz`).

use std::path::Path;
use std::sync::Arc;

use tonic::{Request, Status};

/// The accepted tokens, kept as BLAKE3 hashes (compared in constant time).
#[derive(Clone, Debug)]
pub struct Tokens(Arc<Vec<blake3::Hash>>);

impl Tokens {
    /// Tokens from the lines of `text`; blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Option<Self> {
        let hashes: Vec<_> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| blake3::hash(l.as_bytes()))
            .collect();
        (!hashes.is_empty()).then(|| Self(Arc::new(hashes)))
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Self::parse(&text).ok_or_else(|| {
            format!(
                "token file {} holds no token: put one token per line",
                path.display()
            )
        })
    }

    /// Whether `token` is one of them.
    pub fn accepts(&self, token: &str) -> bool {
        let h = blake3::hash(token.as_bytes());
        // `blake3::Hash`'s equality is constant-time; check every token so timing says nothing.
        self.0.iter().fold(false, |hit, t| hit | (*t == h))
    }

    /// The interceptor check for one request.
    pub fn check(&self, req: &Request<()>) -> Result<(), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(t) if self.accepts(t.trim()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "unknown token: use a token listed in the server's token file",
            )),
            None => Err(Status::unauthenticated(
                "this server needs a token: pass --token-file with a token from the server's token file",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let t = Tokens::parse("# comment\n\nalpha\n  beta  \n").unwrap();
        assert!(t.accepts("alpha") && t.accepts("beta"));
        assert!(!t.accepts("gamma") && !t.accepts(""));
        assert!(Tokens::parse("# only a comment\n").is_none());
        let mut req = Request::new(());
        assert!(t.check(&req).is_err());
        req.metadata_mut()
            .insert("authorization", "Bearer beta".parse().unwrap());
        assert!(t.check(&req).is_ok());
    }
}
