//! Building the C fixtures against the companion's C ABI (`libaiodebug.a`
//! and `libaiodebug.so` of package aiodebug-ffi), once per test process.

use super::workspace_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

pub fn fixtures_target() -> PathBuf {
    workspace_root().join("target/fixtures")
}

/// Runs a build command; on failure shows its output and panics.
pub fn build(mut cmd: Command, what: &str) {
    let out = cmd
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} to build {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed ({}): {cmd:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `libaiodebug.a` / `libaiodebug.so` (package aiodebug-ffi, profile fixture).
pub fn ffi_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut cmd = Command::new(cargo());
        cmd.args([
            "build",
            "--profile",
            "fixture",
            "-p",
            "aiodebug-ffi",
            "--target-dir",
        ])
        .arg(fixtures_target());
        build(cmd, "libaiodebug (aiodebug-ffi)");
        fixtures_target().join("fixture")
    })
}

pub fn header_dir() -> PathBuf {
    workspace_root().join("src/aiodebug-ffi/include")
}

/// What a Rust static library needs from the system on Linux (as printed by
/// `cargo rustc -p aiodebug-ffi --crate-type staticlib -- --print native-static-libs`).
pub const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Compiles a C fixture with gcc into `target/fixtures/bin/c/<out>`
/// (a temporary file renamed into place, so a running copy is never written).
pub fn gcc(sources: &[&str], out: &str, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let dir = fixtures_target().join("bin/c");
    std::fs::create_dir_all(&dir).expect("create target/fixtures/bin/c");
    let dst = dir.join(out);
    let tmp = dir.join(format!(".{out}.tmp-{}", std::process::id()));
    let mut cmd = Command::new("gcc");
    cmd.args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&tmp);
    for s in sources {
        cmd.arg(workspace_root().join(s));
    }
    cmd.args(extra);
    build(cmd, out);
    std::fs::rename(&tmp, &dst).expect("rename the built fixture into place");
    dst
}

/// `fixtures/c-loop/loop.c` linked with `libaiodebug.a`.
pub fn c_loop_static() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| c_with_libaiodebug("fixtures/c-loop/loop.c", "c-loop-static"))
}

/// `fixtures/c-loop/loop.c` linked with `libaiodebug.so` (found through rpath).
pub fn c_loop_shared() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = ffi_dir();
        let extra: Vec<std::ffi::OsString> = vec![
            format!("-I{}", header_dir().display()).into(),
            format!("-L{}", dir.display()).into(),
            format!("-Wl,-rpath,{}", dir.display()).into(),
            "-laiodebug".into(),
        ];
        let refs: Vec<&std::ffi::OsStr> = extra.iter().map(|s| s.as_os_str()).collect();
        gcc(&["fixtures/c-loop/loop.c"], "c-loop-shared", &refs)
    })
}

/// Compiles the C program `source` (relative to the workspace root) with
/// gcc, statically linked with `libaiodebug.a`, into
/// `target/fixtures/bin/c/<out>`.
pub fn c_with_libaiodebug(source: &str, out: &str) -> PathBuf {
    let lib = ffi_dir().join("libaiodebug.a");
    let inc = format!("-I{}", header_dir().display());
    let mut extra: Vec<std::ffi::OsString> = vec!["-pthread".into(), inc.into(), lib.into()];
    extra.extend(STATIC_LIBS.iter().map(|s| s.into()));
    let refs: Vec<&std::ffi::OsStr> = extra.iter().map(|s| s.as_os_str()).collect();
    gcc(&[source], out, &refs)
}
