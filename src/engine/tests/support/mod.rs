//! What the engine's integration tests share: a scratch directory and a
//! child process, both cleaned up on drop (also when the test fails).

#![allow(dead_code)] // Each test file uses its own part.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh `aiodebug-<prefix>-<tag>-<pid>-<thread>` under the temp dir.
    pub fn new(prefix: &str, tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "aiodebug-{prefix}-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the C file `source` into `out` with gcc and `flags` (the test
/// fails if gcc does).
pub fn gcc(flags: &[&OsStr], source: &Path, out: &Path) {
    let status = Command::new("gcc")
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(out)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed");
}
