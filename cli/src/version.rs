//! `--version`: `lbsync-client 0.1.0 (protocol 3)`.

/// What clap prints after the program's name.
pub fn string(crate_version: &str) -> String {
    format!(
        "{crate_version} (protocol {})",
        lbsync_proto::PROTOCOL_VERSION
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_protocol() {
        assert_eq!(
            super::string("0.1.0"),
            format!("0.1.0 (protocol {})", lbsync_proto::PROTOCOL_VERSION)
        );
    }
}
