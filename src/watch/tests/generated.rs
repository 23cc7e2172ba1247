//! The checked-in man page and completions match the clap definitions.
//! Regenerate with `scripts/gen-man`.

use std::path::Path;
use std::process::Command;

fn generated(what: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aiodebug-watch"))
        .args(["generate", what])
        .output()
        .expect("run aiodebug-watch generate");
    assert!(out.status.success(), "generate {what} failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn checked_in(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn man_page_matches_the_cli() {
    let man = generated("man");
    assert!(man.contains("aiodebug\\-watch") && man.contains("status"));
    assert!(
        man.contains("Exit codes"),
        "exit codes missing from the man page"
    );
    assert_eq!(
        man,
        checked_in("man/aiodebug-watch.1"),
        "man/aiodebug-watch.1 drifted from the CLI: run scripts/gen-man"
    );
}

#[test]
fn completions_match_the_cli() {
    for (what, file) in [
        ("complete-bash", "man/completions/aiodebug-watch.bash"),
        ("complete-zsh", "man/completions/_aiodebug-watch"),
        ("complete-fish", "man/completions/aiodebug-watch.fish"),
    ] {
        let text = generated(what);
        assert!(text.contains("status"), "{what} lacks subcommands");
        assert_eq!(
            text,
            checked_in(file),
            "{file} drifted: run scripts/gen-man"
        );
    }
}
