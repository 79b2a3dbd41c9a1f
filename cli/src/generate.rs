//! `completions SHELL` and `man DIR`, made from the very `Command` that parses (its
//! `LBSYNC_*` variables and config-file defaults included).

use std::path::Path;

/// The completion script for `shell`.
pub fn completions(cmd: &clap::Command, shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = cmd.clone();
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Writes a man page for the program and each of its subcommands into `dir` (made if missing).
pub fn man_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd.clone(), dir)
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    #[test]
    fn every_shell_gets_a_script_and_man_pages_are_written() {
        let cmd = clap::Command::new("prog")
            .arg(clap::Arg::new("x").long("x"))
            .subcommand(clap::Command::new("sub"));
        for shell in clap_complete::Shell::value_variants() {
            let s = super::completions(&cmd, *shell);
            assert!(String::from_utf8_lossy(&s).contains("prog"), "{shell}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        super::man_pages(&cmd, &dir.path().join("man1")).expect("man");
        assert!(dir.path().join("man1/prog.1").exists());
        assert!(dir.path().join("man1/prog-sub.1").exists());
    }
}
