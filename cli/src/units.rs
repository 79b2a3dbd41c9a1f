//! Numbers and times in words: bytes in decimal units (1 KB = 1000 bytes, as disks and networks count
//! them), everywhere, the progress bar included; and counted nouns with their plural.

/// Bytes in words: "512 B", "41.2 KB", "3.0 GB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The plural of an English noun as lbsync's messages use them: "chunks", "copies", "entries".
pub fn plural(word: &str) -> String {
    let vowel_before_y = word
        .strip_suffix('y')
        .and_then(|w| w.chars().last())
        .is_some_and(|c| "aeiou".contains(c));
    if let Some(stem) = word.strip_suffix('y').filter(|_| !vowel_before_y) {
        format!("{stem}ies")
    } else if ["s", "sh", "ch", "x", "z"]
        .iter()
        .any(|e| word.ends_with(e))
    {
        format!("{word}es")
    } else {
        format!("{word}s")
    }
}

/// `n` and the noun: "1 chunk", "0 chunks", "2 chunks".
pub fn count(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {}", plural(word))
    }
}

/// Only the noun, for `n`: "chunk" for 1, else "chunks".
pub fn noun(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        plural(word)
    }
}

/// Unix nanoseconds as an RFC 3339 UTC time with milliseconds: "2026-12-01T12:30:01.123Z", as
/// every `--json` output writes times.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(1_764_592_201_123_456_789),
            "2025-12-01T12:30:01.123Z"
        );
    }

    #[test]
    fn bytes_are_decimal() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.0 KB");
        assert_eq!(bytes(41_200), "41.2 KB");
        assert_eq!(bytes(1_048_576), "1.0 MB");
        assert_eq!(bytes(3_000_000_000), "3.0 GB");
    }

    #[test]
    fn counted_nouns() {
        assert_eq!(count(1, "chunk"), "1 chunk");
        assert_eq!(count(0, "chunk"), "0 chunks");
        assert_eq!(count(2, "conflict"), "2 conflicts");
        assert_eq!(count(2, "copy"), "2 copies");
        assert_eq!(count(3, "entry"), "3 entries");
        assert_eq!(count(2, "day"), "2 days");
        assert_eq!(count(2, "pass"), "2 passes");
        assert_eq!(noun(1, "path"), "path");
        assert_eq!(noun(5, "path"), "paths");
    }
}
