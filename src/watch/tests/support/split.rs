//! The fixture `fixtures/c/stacks.c` built `-O2 -g`, then split with objcopy
//! into a stripped binary (which runs) and its `.debug` file, as a
//! distribution ships them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::workspace_root;

/// A stripped build of the fixture and its separate debug file.
pub struct Split {
    /// The stripped binary (`DIR/bin/stacks-stripped`, debug link to `stacks.debug`).
    pub stripped: PathBuf,
    /// Its debug file (`DIR/stacks.debug`).
    pub debug: PathBuf,
    /// The build-id, hex.
    pub build_id: String,
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a build tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The build-id of `elf` as hex, from `readelf -n`.
pub fn build_id(elf: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(elf)
        .output()
        .expect("run readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(|s| s.trim().to_string())
        .expect("the fixture has a build-id")
}

/// Builds the fixture in `dir` (with extra linker arguments `ld`), then
/// `bin/stacks-stripped` (debug link to `stacks.debug`) and `stacks.debug`.
pub fn split(dir: &Path, ld: &[&str]) -> Split {
    let (s, full) = split_keeping_full(dir, ld);
    std::fs::remove_file(full).expect("remove the unstripped build");
    s
}

/// As [`split`], keeping the unstripped build (`DIR/stacks`, returned too).
pub fn split_keeping_full(dir: &Path, ld: &[&str]) -> (Split, PathBuf) {
    let full = dir.join("stacks");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-pthread"])
        .args(ld)
        .arg(workspace_root().join("fixtures/c/stacks.c"))
        .arg("-o")
        .arg(&full));
    // Not beside the binary: found there by its debug link, it would be
    // used without any --debug-dir.
    let debug = dir.join("stacks.debug");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create the binary's directory");
    let stripped = bin.join("stacks-stripped");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&debug));
    run(Command::new("objcopy")
        .args(["--strip-debug", "--strip-unneeded"])
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&full)
        .arg(&stripped));
    let build_id = build_id(&stripped);
    (
        Split {
            stripped,
            debug,
            build_id,
        },
        full,
    )
}

/// Places `debug` in `dir` as `.build-id/xx/rest.debug`.
pub fn place_by_build_id(dir: &Path, debug: &Path, id: &str) {
    let at = dir.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&at).expect("create the build-id directory");
    std::fs::copy(debug, at.join(format!("{}.debug", &id[2..]))).expect("copy the debug file");
}
