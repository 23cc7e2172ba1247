//! Snapshots as **minidumps**, the Breakpad/Crashpad format that
//! rust-minidump, Sentry and Breakpad's tools read (pure: nothing here
//! touches a process).
//!
//! [`write()`] turns a [`ProcessSnapshot`] (and the [`Dump`] made of it) into
//! the bytes of a `.dmp` file:
//!
//! | stream | type | holds |
//! |---|---|---|
//! | SystemInfo | 7 | AMD64, Linux |
//! | ThreadList | 3 | every thread: id, `CONTEXT_AMD64`, its stack |
//! | MemoryList | 5 | each thread's copied stack; the vDSO's image |
//! | ModuleList | 4 | path, range, CodeView `BpEL` record with the GNU build-id |
//! | ThreadNames | 24 | `comm` of every thread |
//! | MiscInfo | 15 | the process id |
//! | LinuxMaps | `0x47670009` | `/proc/PID/maps` as text |
//! | LinuxProcStatus | `0x47670004` | `/proc/PID/status`, when given |
//! | aiodebug | [`AIODEBUG_STREAM`] | JSON ([`stream`]): what the others cannot say |
//!
//! Our own stream (JSON, `"format": "aiodebug-watch snapshot"`, version 1)
//! holds each thread's state letter, CPU time, stop kind, `orig_rax` and
//! `fs_base`, kernel wait, copy facts, **the live unwinding** (frame
//! addresses and kinds, and why the stack ended), each module's load bias,
//! identity, code ranges and problem, the capture's times, and the caller's
//! annotations (loop names, causes, Python frames: an opaque JSON value).
//!
//! [`read()`] turns such bytes back into a [`Saved`] snapshot. Every count and
//! size read from the file is checked against the file's length and capped
//! ([`MAX_STREAMS`], [`MAX_THREADS`], [`crate::module::MAX_MODULES`]); a
//! corrupt or truncated file is a [`ReadError`], never a panic or an
//! allocation larger than the file. A minidump of another writer (no
//! aiodebug stream) is read from its standard streams alone: its threads are
//! unwound again offline, its modules' load bias is assumed to be their base
//! address (true of PIE executables and shared objects).
//!
//! Offline, [`SavedFiles`] finds module files by build-id.

mod bytes;
mod reader;
pub mod stream;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::dump::Dump;
use crate::module::{DebugSource, Module};
use crate::snapshot::ProcessSnapshot;
use crate::unwind::Unwound;

pub use reader::read;
pub use writer::write;

/// `MDMP`.
pub const SIGNATURE: u32 = 0x504d_444d;
/// `MINIDUMP_VERSION` (low 16 bits of the header's version).
pub const VERSION: u32 = 0xa793;
/// The stream type of our own stream (a user stream: above
/// `LastReservedStream` 0xffff, clear of Breakpad's `0x4767xxxx` and
/// Crashpad's `0x4350xxxx`): `AIDB` with the last byte 1.
pub const AIODEBUG_STREAM: u32 = 0x4149_4401;
/// Most streams a file may list.
pub const MAX_STREAMS: usize = 256;
/// Most threads read from a file.
pub const MAX_THREADS: usize = 1 << 16;
/// Largest `.dmp` file read (a sanity cap: the file is read whole).
pub const MAX_FILE: u64 = 1 << 30;

/// Standard stream types.
pub(crate) mod kind {
    pub const THREAD_LIST: u32 = 3;
    pub const MODULE_LIST: u32 = 4;
    pub const MEMORY_LIST: u32 = 5;
    pub const SYSTEM_INFO: u32 = 7;
    pub const MISC_INFO: u32 = 15;
    pub const THREAD_NAMES: u32 = 24;
    pub const LINUX_PROC_STATUS: u32 = 0x4767_0004;
    pub const LINUX_MAPS: u32 = 0x4767_0009;
}

/// `PROCESSOR_ARCHITECTURE_AMD64`.
pub(crate) const ARCH_AMD64: u16 = 9;
/// Breakpad's `MD_OS_LINUX`.
pub(crate) const OS_LINUX: u32 = 0x8201;
/// The CodeView signature of an ELF build-id record (`BpEL`, Breakpad's and
/// rust-minidump's, read as a little-endian u32).
pub(crate) const CV_ELF: u32 = 0x4270_454c;
/// `CONTEXT_AMD64 | CONTEXT_CONTROL | CONTEXT_INTEGER`.
pub(crate) const CONTEXT_FLAGS: u32 = 0x0010_0003;
/// Size of `CONTEXT_AMD64`.
pub(crate) const CONTEXT_SIZE: usize = 1232;

/// What a minidump gives back: the snapshot, and what the live dump knew.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The snapshot (modules without opened files: see [`SavedFiles`]).
    pub snapshot: ProcessSnapshot,
    /// The live unwinding of each thread, by tid (empty for a file of
    /// another writer).
    pub unwound: HashMap<i32, Unwound>,
    /// `/proc/PID/status` as saved, if it was.
    pub proc_status: Option<Vec<u8>>,
    /// The caller's annotations ([`Extra::annotations`]; `Null` if none).
    pub annotations: serde_json::Value,
    /// The file came from another writer (no aiodebug stream).
    pub foreign: bool,
}

/// What [`write()`] adds to the snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// The dump made of the snapshot: its unwinding is recorded.
    pub dump: Option<&'a Dump>,
    /// `/proc/PID/status` of the target, read just after the dump.
    pub proc_status: Option<&'a [u8]>,
    /// The caller's own facts (loop names, causes, Python frames), kept as
    /// they are.
    pub annotations: Option<&'a serde_json::Value>,
}

/// Why a file is not a usable minidump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a usable minidump: {0}")]
pub struct ReadError(pub String);

/// Module files for a saved snapshot on a host where the target may never
/// have run: found by build-id in `--debug-dir`s (`.build-id/xx/rest`, the
/// module itself, then `.build-id/xx/rest.debug`), at the recorded path when
/// its build-id matches, under this host's `/usr/lib/debug`, then through
/// debuginfod.
#[derive(Debug, Clone, Default)]
pub struct SavedFiles {
    /// Directories laid out as `/usr/lib/debug`.
    pub debug_dirs: Vec<PathBuf>,
    /// Asked by build-id for what none of the directories has.
    pub debuginfod: Option<Arc<crate::debuginfod::Debuginfod>>,
}

impl SavedFiles {
    /// Candidate paths of the file of a module with `build_id`, in order.
    fn candidates(&self, build_id: &[u8], recorded: Option<&std::path::Path>) -> Vec<PathBuf> {
        let mut dirs = self.debug_dirs.clone();
        dirs.push(PathBuf::from("/usr/lib/debug"));
        let mut out = Vec::new();
        // The module itself first (gdb's `.build-id/xx/rest` link): it has
        // the code and `.eh_frame`; the `.debug` file has neither.
        for d in &dirs {
            if let Some(p) = crate::symbols::build_id_path(d, build_id) {
                out.push(p.with_extension(""));
            }
        }
        if let Some(p) = recorded {
            out.push(p.to_path_buf());
        }
        for d in &dirs {
            out.extend(crate::symbols::build_id_path(d, build_id));
        }
        out
    }
}

impl DebugSource for SavedFiles {
    fn open_module(&self, module: &Module) -> std::io::Result<File> {
        let not_found = |what: String| std::io::Error::new(std::io::ErrorKind::NotFound, what);
        let Some(id) = module.build_id.as_deref() else {
            // Without a build-id only the recorded path can be tried, and
            // only if its identity still matches.
            let path = module
                .path
                .as_deref()
                .ok_or_else(|| not_found("the module has no file".into()))?;
            let file = File::open(path)?;
            if let Some(crate::module::ModuleId::File(fid)) = &module.id {
                use std::os::unix::fs::MetadataExt;
                let md = file.metadata()?;
                if md.len() != fid.size || md.mtime() != fid.mtime {
                    return Err(std::io::Error::other(
                        "the file at the recorded path is not the one the target mapped",
                    ));
                }
            }
            return Ok(file);
        };
        for p in self.candidates(id, module.path.as_deref()) {
            let Ok(f) = File::open(&p) else { continue };
            if crate::symbols::build_id_of_file(&f).as_deref() == Some(id) {
                return Ok(f);
            }
        }
        if let Some(d) = &self.debuginfod {
            if let Ok(p) = d.fetch(id) {
                return File::open(p);
            }
        }
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Err(not_found(format!(
            "no file with build-id {hex} at its path, in {} --debug-dir or by debuginfod",
            self.debug_dirs.len()
        )))
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![PathBuf::from("/")]
    }

    fn debug_dirs(&self) -> Vec<PathBuf> {
        self.debug_dirs.clone()
    }

    fn debuginfod(&self) -> Option<Arc<crate::debuginfod::Debuginfod>> {
        self.debuginfod.clone()
    }
}

#[cfg(test)]
mod tests;
