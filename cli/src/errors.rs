//! A fatal error in words: "lbsync-client: connecting to http://x: tcp connect error: Connection
//! refused (os error 111)", each cause said once (anyhow's `{:#}` repeats a wrapper's cause).

use std::io::Write as _;

/// The error and its causes, "a: b: c", a cause already said left out.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    lbsync_proto::error_chain(e)
}

/// Prints `program: error chain` on stderr; a stderr that is gone is not a second error.
pub fn print_fatal(program: &str, e: &(dyn std::error::Error + 'static)) {
    let _ = writeln!(std::io::stderr(), "{program}: {}", chain(e));
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let e = E(
            "connecting to http://127.0.0.1:1",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E(
                    "tcp connect error",
                    Some(Box::new(E("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            super::chain(&e),
            "connecting to http://127.0.0.1:1: tcp connect error: Connection refused (os error 111)"
        );
    }
}
