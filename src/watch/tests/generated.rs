//! The checked-in man pages and completions match the clap definitions.
//! Regenerate with `scripts/gen-man`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn generated(what: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aiodebug-watch"))
        .args(["generate", what])
        .output()
        .expect("run aiodebug-watch generate");
    assert!(out.status.success(), "generate {what} failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn checked_in(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn man_pages_match_the_cli() {
    let man = generated("man");
    assert!(man.contains("aiodebug\\-watch\\-status(1)"), "{man}");
    assert!(
        man.contains("EXIT STATUS") && man.contains("CAP_SYS_PTRACE"),
        "{man}"
    );
    assert_eq!(
        man,
        checked_in("man/aiodebug-watch.1"),
        "man/aiodebug-watch.1 drifted from the CLI: run scripts/gen-man"
    );
    // Every page, main and per subcommand, and no stale page left over.
    let dir = std::env::temp_dir().join(format!("aiodebug-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new(env!("CARGO_BIN_EXE_aiodebug-watch"))
        .args(["generate", "man", "--dir"])
        .arg(&dir)
        .status()
        .expect("generate man --dir");
    assert!(status.success());
    let pages = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".1"))
            .collect();
        v.sort();
        v
    };
    let names = pages(&dir);
    assert!(
        names.contains(&"aiodebug-watch-watch.1".to_string()),
        "{names:?}"
    );
    assert_eq!(
        names,
        pages(&root().join("man")),
        "man/ has other pages than the CLI"
    );
    for name in &names {
        let fresh = std::fs::read_to_string(dir.join(name)).expect("read generated");
        assert_eq!(
            fresh,
            checked_in(&format!("man/{name}")),
            "man/{name} drifted from the CLI: run scripts/gen-man"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_match_the_cli() {
    for (what, file) in [
        ("complete-bash", "man/completions/aiodebug-watch.bash"),
        ("complete-zsh", "man/completions/_aiodebug-watch"),
        ("complete-fish", "man/completions/aiodebug-watch.fish"),
    ] {
        let text = generated(what);
        assert!(
            text.contains("status") && text.contains("watch"),
            "{what} lacks subcommands"
        );
        assert_eq!(
            text,
            checked_in(file),
            "{file} drifted: run scripts/gen-man"
        );
    }
}
