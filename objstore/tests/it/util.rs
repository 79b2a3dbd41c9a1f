//! Test helpers.

/// A real S3 service to test against, from `LBSYNC_TEST_STORE` (an `s3://` URL, e.g. what
/// `eval "$(scripts/dev-cluster start DIR)"` exports), with a fresh prefix per test under it.
///
/// Without it the test is skipped with a note, except in CI (`CI=true`), where a skipped test
/// hides a missing service: there it panics. The same rule as
/// `lbsync_testsupport::services::s3`, which is not on main yet; switch to it once it is.
pub(crate) struct S3Service {
    /// The URL to open: `LBSYNC_TEST_STORE` with `/<test name>-<random>` appended to its path.
    pub(crate) url: String,
}

pub(crate) fn s3(test_name: &str) -> Option<S3Service> {
    let Some(base) = std::env::var("LBSYNC_TEST_STORE")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{test_name}: LBSYNC_TEST_STORE is not set in CI; .ci/run must start the S3 \
                 service (scripts/dev-cluster) and export it"
            );
        }
        eprintln!(
            "skipping {test_name}: set LBSYNC_TEST_STORE (eval \"$(scripts/dev-cluster start DIR)\")"
        );
        return None;
    };
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).expect("the OS random source works");
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let (path, query) = base.split_once('?').unwrap_or((&base, ""));
    let path = path.trim_end_matches('/');
    let url = if query.is_empty() {
        format!("{path}/{test_name}-{suffix}")
    } else {
        format!("{path}/{test_name}-{suffix}?{query}")
    };
    Some(S3Service { url })
}
