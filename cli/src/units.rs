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

/// A duration written the way a person would: a number and a unit, or several, such as
/// `180d`, `12h`, `90m`, `30s`, `2w`, `1d12h` (units `s`, `m`, `h`, `d`, `w`; a day is 24 hours).
/// `0` alone is no time at all.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let text = s.trim();
    let bad = |why: &str| {
        format!(
            "cannot read {s:?} as a duration: {why}; write e.g. 180d, 12h, 90m, 30s, 2w or 1d12h"
        )
    };
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut secs: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("each unit needs a number before it"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 24 * 3600,
            "w" => 7 * 24 * 3600,
            "" => return Err(bad("a number needs its unit")),
            _ => return Err(bad("the units are s, m, h, d and w")),
        };
        rest = &rest[unit_len..];
        secs = n
            .checked_mul(unit)
            .and_then(|v| secs.checked_add(v))
            .ok_or_else(|| bad("it is too long"))?;
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// A duration in the largest whole unit of [`parse_duration`] that divides it: "180d", "36h",
/// "90s".
pub fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    for (unit, len) in [("d", 24 * 3600), ("h", 3600), ("m", 60)] {
        if secs > 0 && secs.is_multiple_of(len) {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("180d"), Ok(180 * 86400));
        assert_eq!(d("1d12h"), Ok(86400 + 12 * 3600));
        assert_eq!(d("2w"), Ok(14 * 86400));
        assert_eq!(d(" 90m "), Ok(5400));
        assert_eq!(d("0"), Ok(0));
        assert_eq!(d("0s"), Ok(0));
        for bad in [
            "",
            "d",
            "12",
            "3 days",
            "5y",
            "-1d",
            "99999999999999999999s",
        ] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        assert!(d("12").unwrap_err().contains("180d"));
        let w = |s: u64| duration(std::time::Duration::from_secs(s));
        assert_eq!(w(180 * 86400), "180d");
        assert_eq!(w(36 * 3600), "36h");
        assert_eq!(w(90), "90s");
        assert_eq!(w(0), "0s");
    }

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
