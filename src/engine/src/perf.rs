//! Counting entries into a thread's wait system calls with the kernel's
//! syscall tracepoints (`perf_event_open`, type `PERF_TYPE_TRACEPOINT`,
//! counting mode): the only unsafe code of the syscall watch.
//!
//! One group of counters per thread, one counter per wait call the kernel has
//! a tracepoint for (`syscalls:sys_enter_epoll_wait`, `..._epoll_pwait`,
//! `..._poll`, ...). The group is read with one `read(2)` of
//! `PERF_FORMAT_GROUP`: the number of counters, then each count. The thread is
//! never stopped and nothing is written to it; the kernel increments the
//! count when the thread enters the call.
//!
//! Why counting and not BPF: the hang rule only needs "did the thread enter
//! its wait call again since the last look", which a counter answers with one
//! 8-byte-per-event read, needs no verifier, no BTF and no map, and costs the
//! target one tracepoint hit per wait call (measured by
//! `scripts/bench-syscall-loop`).

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The wait calls an event loop returns to once per iteration, by tracefs
/// name (x86_64 and aarch64 names; a call the kernel lacks is skipped).
///
/// Not `io_uring_enter`: a loop calls it to submit as well as to wait, so
/// being inside it does not mean idle, and an entry does not mean a new
/// iteration.
pub const WAIT_CALLS: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
];

/// Where tracefs is usually mounted.
const TRACEFS_DIRS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracepoint ids of the wait calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitTracepoints {
    /// `(call name, tracepoint id)` of each wait call this kernel traces.
    pub calls: Vec<(&'static str, u64)>,
    /// The tracefs directory the ids were read from.
    pub tracefs: PathBuf,
    /// Whether the ids came from a private tracefs mounted for the purpose
    /// (and unmounted at once: `tracefs` no longer exists).
    pub mounted: bool,
}

/// Parses a tracefs `id` file: a decimal number and a newline.
pub fn parse_id(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data).ok()?.trim().parse().ok()
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // An id file holds a few digits; read at most 64 bytes of anything else.
    File::open(path)?.take(64).read_to_end(&mut buf)?;
    Ok(buf)
}

fn ids_in(dir: &Path) -> Vec<(&'static str, u64)> {
    WAIT_CALLS
        .iter()
        .filter_map(|&c| {
            let p = dir.join(format!("events/syscalls/sys_enter_{c}/id"));
            read_small(&p)
                .ok()
                .and_then(|d| parse_id(&d))
                .map(|id| (c, id))
        })
        .collect()
}

impl WaitTracepoints {
    /// Finds the tracepoint ids of the wait calls in tracefs. When no mounted
    /// tracefs has them (this machine mounts none), mounts a private tracefs
    /// on a fresh directory under the temp dir, reads the ids and unmounts it
    /// again (root only): the ids are all `perf_event_open` needs, so the
    /// host's mount table is left as found.
    pub fn find() -> Result<WaitTracepoints> {
        for d in TRACEFS_DIRS {
            let dir = Path::new(d);
            let calls = ids_in(dir);
            if !calls.is_empty() {
                return Ok(WaitTracepoints {
                    calls,
                    tracefs: dir.to_path_buf(),
                    mounted: false,
                });
            }
        }
        let dir = std::env::temp_dir().join(format!("aiodebug-tracefs-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(Error::io(format!("creating {}", dir.display()), e));
            }
        }
        let mounted = nix::mount::mount(
            Some("nodev"),
            &dir,
            Some("tracefs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        let calls = if mounted.is_ok() {
            ids_in(&dir)
        } else {
            Vec::new()
        };
        if mounted.is_ok() {
            // Lazy: nothing of ours holds a file open there, but a lazy
            // unmount never fails on a busy mount.
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&dir);
        if calls.is_empty() {
            let why = match mounted {
                Err(nix::errno::Errno::EPERM) | Err(nix::errno::Errno::EACCES) => {
                    return Err(Error::PermissionDenied {
                        pid: 0,
                        hint: format!(
                            "the syscall tracepoint ids are unreadable: no tracefs readable at {} \
                             and mounting one needs root (`mount -t tracefs nodev \
                             /sys/kernel/tracing`); then {}",
                            TRACEFS_DIRS.join(", "),
                            permission_hint(read_paranoid())
                        ),
                    })
                }
                Err(e) => format!("no tracefs mounted and mounting one failed: {e}"),
                Ok(()) => "tracefs has no events/syscalls/sys_enter_* (kernel without \
                           CONFIG_FTRACE_SYSCALLS?)"
                    .to_string(),
            };
            return Err(Error::io(
                format!("finding the syscall tracepoints: {why}"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no syscall tracepoints"),
            ));
        }
        Ok(WaitTracepoints {
            calls,
            tracefs: dir,
            mounted: true,
        })
    }
}

/// `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER0` (64 bytes): every
/// field a counting tracepoint needs; the kernel treats a smaller `size` as
/// "the later fields are zero".
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FORMAT_GROUP: u64 = 1 << 3;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_ATTR_SIZE_VER0: u32 = 64;

use nix::libc;

/// What to do when the kernel refuses a counter: the hint names the knobs.
pub fn permission_hint(paranoid: Option<i32>) -> String {
    format!(
        "the kernel refused a perf tracepoint counter (perf_event_paranoid is {}): run as root \
         or with CAP_PERFMON (plus CAP_SYS_PTRACE for another user's process), or lower \
         /proc/sys/kernel/perf_event_paranoid; `dump` still works",
        paranoid.map_or_else(|| "unknown".into(), |p| p.to_string())
    )
}

/// `/proc/sys/kernel/perf_event_paranoid`, if readable.
pub fn read_paranoid() -> Option<i32> {
    read_small(Path::new("/proc/sys/kernel/perf_event_paranoid"))
        .ok()
        .and_then(|d| std::str::from_utf8(&d).ok()?.trim().parse().ok())
}

fn open_one(tid: i32, id: u64, group: Option<&File>) -> std::io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: PERF_ATTR_SIZE_VER0,
        config: id,
        read_format: PERF_FORMAT_GROUP,
        // Enabled at once, counting only (no sampling, no ring buffer).
        flags: 0,
        ..Default::default()
    };
    let group_fd = group.map_or(-1, |g| g.as_raw_fd());
    // SAFETY: `attr` is a valid, initialized perf_event_attr of the size it
    // declares and lives across the call; the other arguments are plain
    // integers. The kernel only reads `attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            tid as libc::pid_t,
            -1 as libc::c_int,
            group_fd as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| std::io::Error::other("bad fd"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns; OwnedFd closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The wait-call counters of one thread; closed on drop.
#[derive(Debug)]
pub struct WaitCounters {
    tid: i32,
    /// The group leader first; all read through the leader.
    fds: Vec<File>,
    /// The call each counter counts, in read order.
    calls: Vec<&'static str>,
}

/// What went wrong opening counters, for the caller's next step.
fn classify(pid: i32, tid: i32, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
            pid,
            hint: permission_hint(read_paranoid()),
        },
        Some(libc::ESRCH) => Error::Exited { pid: tid },
        _ => Error::io(format!("perf_event_open on thread {tid} of {pid}"), e),
    }
}

impl WaitCounters {
    /// Opens one counter per wait call on thread `tid` of process `pid`.
    /// Errors: [`Error::PermissionDenied`] (naming `perf_event_paranoid`)
    /// when the kernel refuses, [`Error::Exited`] with the tid when the thread
    /// is gone.
    pub fn open(pid: i32, tid: i32, tps: &WaitTracepoints) -> Result<WaitCounters> {
        let mut fds: Vec<File> = Vec::with_capacity(tps.calls.len());
        let mut calls = Vec::with_capacity(tps.calls.len());
        for &(name, id) in &tps.calls {
            let fd = open_one(tid, id, fds.first()).map_err(|e| classify(pid, tid, e))?;
            fds.push(File::from(fd));
            calls.push(name);
        }
        Ok(WaitCounters { tid, fds, calls })
    }

    /// The thread counted.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The calls counted, in the order [`WaitCounters::read`] returns them.
    pub fn calls(&self) -> &[&'static str] {
        &self.calls
    }

    /// Entries so far into each call (same order as [`WaitCounters::calls`]).
    pub fn read(&self) -> std::io::Result<Vec<u64>> {
        let Some(leader) = self.fds.first() else {
            return Ok(Vec::new());
        };
        // PERF_FORMAT_GROUP: u64 nr, then nr u64 values.
        let mut buf = [0u8; 8 * (1 + WAIT_CALLS.len())];
        let want = 8 * (1 + self.fds.len());
        let n = (&*leader).read(&mut buf[..want])?;
        parse_group(&buf[..n])
            .filter(|v| v.len() == self.fds.len())
            .ok_or_else(|| std::io::Error::other(format!("short perf group read ({n} bytes)")))
    }
}

/// Parses a `PERF_FORMAT_GROUP` read: `nr`, then `nr` counts (native endian).
/// `None` if the buffer is shorter than it says.
pub fn parse_group(data: &[u8]) -> Option<Vec<u64>> {
    let word = |i: usize| -> Option<u64> {
        let b = data.get(i * 8..i * 8 + 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    };
    let nr = usize::try_from(word(0)?).ok()?.min(WAIT_CALLS.len());
    (1..=nr).map(word).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse() {
        assert_eq!(parse_id(b"1234\n"), Some(1234));
        assert_eq!(parse_id(b"x"), None);
        assert_eq!(parse_id(b""), None);
    }

    #[test]
    fn group_reads_parse() {
        let mut d = Vec::new();
        for v in [2u64, 7, 9] {
            d.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_group(&d), Some(vec![7, 9]));
        assert_eq!(parse_group(&d[..16]), None);
        assert_eq!(parse_group(&[]), None);
        // An absurd count is capped, not allocated.
        let huge = u64::MAX.to_ne_bytes();
        assert_eq!(parse_group(&huge), None);
    }

    #[test]
    fn hint_names_the_knobs() {
        let h = permission_hint(Some(2));
        assert!(h.contains("perf_event_paranoid is 2"), "{h}");
        assert!(h.contains("CAP_PERFMON"), "{h}");
    }

    #[test]
    fn attr_is_ver0_sized() {
        assert_eq!(
            std::mem::size_of::<PerfEventAttr>(),
            PERF_ATTR_SIZE_VER0 as usize
        );
    }
}
