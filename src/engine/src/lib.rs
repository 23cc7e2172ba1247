//! # aiodebug-engine
//!
//! Everything `aiodebug-watch` does to another process, as a library without
//! CLI concerns (no argument parsing, no printing, no metrics):
//! - [`proc`]: pure parsers of `/proc/PID/{maps,status,stat,timens_offsets}`;
//! - [`elf`]: find heartbeat registries in the ELF files a process maps, and
//!   their load bias;
//! - [`module`]: one model of a mapped module (identity, load bias, facts cache);
//! - [`debuginfod`]: debug files fetched by build-id (`DEBUGINFOD_URLS`), cached;
//! - [`minidump`]: snapshots written to and read from minidump files (pure);
//! - [`memory`]: read the target's memory with `process_vm_readv`;
//! - [`heartbeat`]: decode registry bytes (pure, untrusted input);
//! - [`target`]: the glue — open a PID, locate its registries, read loops;
//! - [`cause`]: why a thread is stuck (system call, lock owner, throttling);
//! - [`python`]: Python frames of CPython 3.11–3.14 processes;
//! - [`tidmap`]: thread ids of a target in another PID namespace, mapped to ours;
//! - [`cgroup`]: container and pod ids from `/proc/PID/cgroup` (pure);
//! - [`threadstate`]: what the kernel says a thread is doing (parked or not);
//! - [`perf`]: count a thread's entries into its wait calls (syscall tracepoints);
//! - [`syscount`]: count (and name) every system call of a stalled thread;
//! - [`loops`]: which threads are event loops and which of them hang, from
//!   those counts (pure).
//!
//! Every value read from a target is untrusted: sizes, counts and strings are
//! bounds-checked, nothing is allocated from a count without a cap.

#![warn(missing_docs)]

pub mod attach;
pub mod cause;
pub mod cgroup;
pub mod debuginfod;
pub mod dump;
pub mod elf;
pub mod error;
pub mod heartbeat;
pub mod loops;
pub mod mapped;
pub mod memory;
pub mod minidump;
pub mod module;
pub mod perf;
pub mod proc;
pub mod python;
pub mod snapshot;
pub mod symbols;
pub mod syscount;
pub mod target;
pub mod threadstate;
pub mod tidmap;
pub mod unwind;

pub use error::{Error, ErrorKind, Result};
