//! Store URLs: which object store, which bucket, under which prefix.
//!
//! - `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=true|false]`: an S3-compatible
//!   store. Credentials come only from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//!   `AWS_ENDPOINT_URL`, ...), read by object_store's `AmazonS3Builder::from_env`; the URL's
//!   options override the environment's. With an endpoint (in the URL or `AWS_ENDPOINT_URL`)
//!   requests are path-style unless `path_style=false`, and an `http://` endpoint allows plain
//!   HTTP. A URL carrying credentials (`user:password@`) is refused: they would end up in shell
//!   histories, process lists and logs.
//! - `file:///DIR`: a directory (object_store's `LocalFileSystem`), created if missing.
//! - `memory://[PREFIX]`: a new empty in-memory store, for tests.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;

use crate::error::{Error, Result};

/// The query options an `s3://` URL may carry.
const S3_OPTIONS: &str = "endpoint, region, path_style";

/// Opens the object store a URL names and returns it with the prefix under which the store's
/// objects live (see the module docs for the forms).
pub fn object_store_from_url(url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let (store, prefix, _) = open_url(url)?;
    Ok((store, prefix))
}

/// [`object_store_from_url`], plus the URL to show in messages: the given one without its
/// query, e.g. `s3://bucket/prefix`.
pub(crate) fn open_url(url: &str) -> Result<(Arc<dyn ObjectStore>, Path, String)> {
    let bad = |what: String| Error::BadUrl {
        url: redact(url),
        what,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "expected s3://BUCKET[/PREFIX], file:///DIR or memory://".into(),
        ));
    };
    match scheme {
        "s3" => open_s3(url, rest),
        "file" => {
            if rest.contains('?') {
                return Err(bad("a file:// URL takes no options".into()));
            }
            let dir = percent_decode(rest).map_err(bad)?;
            if !dir.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute directory, e.g. file:///var/lib/lbsync".into(),
                ));
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(format!("cannot create directory {dir}: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| bad(format!("cannot use directory {dir}: {e}")))?;
            Ok((Arc::new(fs), Path::default(), format!("file://{dir}")))
        }
        "memory" => {
            let prefix = parse_prefix(rest).map_err(bad)?;
            let shown = format!("memory://{prefix}");
            Ok((
                Arc::new(object_store::memory::InMemory::new()),
                prefix,
                shown,
            ))
        }
        other => Err(bad(format!(
            "unknown scheme {other:?}: expected s3://BUCKET[/PREFIX], file:///DIR or memory://"
        ))),
    }
}

fn open_s3(url: &str, rest: &str) -> Result<(Arc<dyn ObjectStore>, Path, String)> {
    let bad = |what: String| Error::BadUrl {
        url: redact(url),
        what,
    };
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL: remove `user:password@` and set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if needed) in \
             the environment"
                .into(),
        ));
    }
    check_bucket(bucket).map_err(bad)?;
    let prefix = parse_prefix(prefix).map_err(bad)?;

    let mut endpoint = None;
    let mut region = None;
    let mut path_style = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(bad)?;
        match key {
            "endpoint" => endpoint = Some(value),
            "region" => region = Some(value),
            "path_style" => {
                path_style = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(bad(format!("path_style={value:?}: expected true or false")));
                    }
                });
            }
            _ => {
                return Err(bad(format!(
                    "unknown option {key:?}: an s3:// URL takes {S3_OPTIONS}; credentials come \
                     from the AWS_* environment variables"
                )));
            }
        }
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let env_endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    if let Some(e) = &endpoint {
        builder = builder.with_endpoint(e);
    }
    if let Some(e) = endpoint.as_ref().or(env_endpoint.as_ref()) {
        if e.contains('@') {
            return Err(bad(
                "the endpoint carries credentials: remove `user:password@` and set \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
                    .into(),
            ));
        }
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(bad(format!(
                "endpoint {e:?} is not an http:// or https:// URL, e.g. http://127.0.0.1:3900"
            )));
        }
        if e.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        // Self-hosted stores (Garage, MinIO, s3s) answer path-style requests; bucket DNS names
        // rarely resolve on them.
        builder = builder.with_virtual_hosted_style_request(!path_style.unwrap_or(true));
    } else if let Some(p) = path_style {
        builder = builder.with_virtual_hosted_style_request(!p);
    }
    if let Some(r) = region {
        builder = builder.with_region(r);
    }
    let s3 = builder
        .build()
        .map_err(|e| bad(format!("cannot configure the S3 client: {e}")))?;
    let shown = if prefix.as_ref().is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    Ok((Arc::new(s3), prefix, shown))
}

/// S3's bucket naming rules, loosely: 3 to 63 lowercase letters, digits, dots and hyphens.
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("no bucket: expected s3://BUCKET[/PREFIX]".into());
    }
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !ok_chars || !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, dots \
             and hyphens)"
        ));
    }
    Ok(())
}

/// A prefix as object_store's `Path`: `/`-separated, no empty, `.` or `..` segments. Leading and
/// trailing slashes are dropped.
fn parse_prefix(prefix: &str) -> Result<Path, String> {
    let decoded = percent_decode(prefix)?;
    let trimmed = decoded.trim_matches('/');
    if trimmed.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("prefix {trimmed:?} has a . or .. segment"));
    }
    Path::parse(trimmed).map_err(|e| format!("prefix {trimmed:?} is not usable: {e}"))
}

/// Decodes `%XX` escapes.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape at byte {i} of {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// The URL with any `user:password@` replaced, so that a refused URL's secret is not printed.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://REDACTED@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match open_url(url) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn s3_urls_parse_with_their_prefix_and_options() {
        let (store, prefix, shown) =
            open_url("s3://my-bucket/a/b/?endpoint=http://127.0.0.1:3900&region=garage").unwrap();
        assert_eq!(prefix.as_ref(), "a/b");
        assert_eq!(shown, "s3://my-bucket/a/b");
        assert!(store.to_string().contains("my-bucket"), "{store}");
        let (_, prefix, shown) = open_url("s3://my-bucket?path_style=false").unwrap();
        assert_eq!((prefix.as_ref(), shown.as_str()), ("", "s3://my-bucket"));
        let (_, prefix, _) = open_url("s3://bkt/with%20space").unwrap();
        assert_eq!(prefix.as_ref(), "with space");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = err("s3://AKIA:secret@bucket/p");
        assert!(
            e.contains("AWS_ACCESS_KEY_ID") && !e.contains("secret@"),
            "{e}"
        );
        let e = err("s3://bucket/p?endpoint=http://k:s@host:1");
        assert!(e.contains("credentials"), "{e}");
        assert!(err("s3://bucket?secret_access_key=x").contains("unknown option"));
        assert!(err("s3://bucket?path_style=yes").contains("true or false"));
        assert!(err("s3://bucket?endpoint=127.0.0.1:3900").contains("http://"));
        assert!(err("s3://").contains("no bucket"));
        assert!(err("s3://Bad_Bucket").contains("bucket name"));
        assert!(err("s3://bucket/a/../b").contains(".."));
        assert!(err("gs://bucket").contains("unknown scheme"));
        assert!(err("/var/lib/lbsync").contains("expected s3://"));
        assert!(err("file://relative/dir").contains("absolute"));
    }

    #[test]
    fn file_and_memory_urls_open() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/store", dir.path().display());
        let (_, prefix, shown) = open_url(&url).unwrap();
        assert_eq!((prefix.as_ref(), shown), ("", url));
        assert!(dir.path().join("store").is_dir());
        let (_, prefix, _) = open_url("memory://t/1").unwrap();
        assert_eq!(prefix.as_ref(), "t/1");
    }
}
