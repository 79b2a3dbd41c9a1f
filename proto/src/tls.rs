//! Certificate fingerprints, as the server prints them and the client's `--pin` takes them:
//! `sha256:` and the SHA-256 of the certificate's DER bytes in lowercase hex (what
//! `openssl x509 -noout -fingerprint -sha256` shows, without its colons).

/// The fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: String = sha256(der).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// The SHA-256 a pin names: `sha256:` then 64 hex digits, in either case, colons allowed
/// between them (as openssl prints them).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "bad pin {pin:?}: expected sha256: and 64 hex digits, as lbsync-server prints its \
             certificate's fingerprint when it starts"
        )
    };
    let hex = pin
        .strip_prefix("sha256:")
        .or_else(|| pin.strip_prefix("SHA256:"))
        .ok_or_else(bad)?;
    let digits: Vec<u8> = hex
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *o = pair[0] << 4 | pair[1];
    }
    Ok(out)
}

/// The fingerprints of a `--pin` value: one, or several separated by commas (the servers of one
/// store, each with a self-signed certificate of its own).
pub fn parse_pins(pins: &str) -> Result<Vec<[u8; 32]>, String> {
    pins.split(',').map(|p| parse_pin(p.trim())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_parses_back_as_its_pin() {
        let f = fingerprint(b"not really a certificate");
        assert_eq!(f.len(), 7 + 64);
        let pin = parse_pin(&f).unwrap();
        assert_eq!(pin, sha256(b"not really a certificate"));
        // openssl's form: upper case, colons.
        let openssl: Vec<String> = pin.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_pin(&format!("SHA256:{}", openssl.join(":"))), Ok(pin));
        assert_eq!(parse_pins(&format!("{f}, {f}")), Ok(vec![pin, pin]));
        assert!(parse_pins(&format!("{f},")).is_err());
        for bad in ["", "sha256:", "md5:00", "sha256:zz", &f[..f.len() - 1]] {
            assert!(parse_pin(bad).unwrap_err().contains("bad pin"), "{bad}");
        }
    }
}
