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
    /// `(call name, sys_exit tracepoint id)` of the same calls, for
    /// [`WaitSampler`] (a call whose exit id is unreadable is not sampled).
    pub exits: Vec<(&'static str, u64)>,
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
    // An id file holds a few digits; read at most 64 bytes of anything else.
    read_capped(path, 64)
}

/// At most `cap` bytes of the file at `path` (tracefs files: never more).
pub(crate) fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(cap).read_to_end(&mut buf)?;
    Ok(buf)
}

fn ids_in(dir: &Path, edge: &str) -> Vec<(&'static str, u64)> {
    WAIT_CALLS
        .iter()
        .filter_map(|&c| {
            let p = dir.join(format!("events/syscalls/sys_{edge}_{c}/id"));
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
        let ((calls, exits), tracefs, mounted) =
            from_tracefs("events/syscalls/sys_enter_*", |dir| {
                let calls = ids_in(dir, "enter");
                (!calls.is_empty()).then(|| (calls, ids_in(dir, "exit")))
            })?;
        Ok(WaitTracepoints {
            calls,
            exits,
            tracefs,
            mounted,
        })
    }
}

/// Reads something out of tracefs with `read`: from a mounted tracefs if one
/// has it, or else from a private tracefs mounted on a fresh directory under
/// the temp dir and unmounted (lazily) right after the read (root only), so
/// that the host's mount table is left as found. Returns what `read` gave,
/// the directory it was read from, and whether that was a private mount
/// (gone by now). `what` names the files for the error.
pub(crate) fn from_tracefs<T>(
    what: &str,
    read: impl Fn(&Path) -> Option<T>,
) -> Result<(T, PathBuf, bool)> {
    for d in TRACEFS_DIRS {
        let dir = Path::new(d);
        if let Some(v) = read(dir) {
            return Ok((v, dir.to_path_buf(), false));
        }
    }
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Unique per call: two watches of one process (the fleet, tests) may
    // look at the same moment.
    let dir = std::env::temp_dir().join(format!(
        "aiodebug-tracefs-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
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
    let got = if mounted.is_ok() { read(&dir) } else { None };
    if mounted.is_ok() {
        // Lazy: nothing of ours holds a file open there, but a lazy
        // unmount never fails on a busy mount.
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&dir);
    match (got, mounted) {
        (Some(v), _) => Ok((v, dir, true)),
        (None, Err(nix::errno::Errno::EPERM)) | (None, Err(nix::errno::Errno::EACCES)) => {
            Err(Error::PermissionDenied {
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
        (None, mounted) => {
            let why = match mounted {
                Err(e) => format!("no tracefs mounted and mounting one failed: {e}"),
                Ok(()) => format!("tracefs has no {what} (kernel without CONFIG_FTRACE_SYSCALLS?)"),
            };
            Err(Error::io(
                format!("finding the syscall tracepoints: {why}"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no syscall tracepoints"),
            ))
        }
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
    perf_event_open(&attr, tid, group)
}

/// The attribute structs `perf_event_open` is given: `#[repr(C)]` images of
/// `struct perf_event_attr` whose `size` field says their own size.
trait Attr: Copy {}
impl Attr for PerfEventAttr {}
impl Attr for PerfEventAttrV3 {}

/// `perf_event_open(attr, tid, cpu -1, group, CLOEXEC)`: one event on one
/// thread, any CPU.
fn perf_event_open<A: Attr>(attr: &A, tid: i32, group: Option<&File>) -> std::io::Result<OwnedFd> {
    let group_fd = group.map_or(-1, |g| g.as_raw_fd());
    // SAFETY: `attr` is a valid, initialized perf_event_attr (an `Attr`:
    // repr(C), `size` its own size) that lives across the call; the other
    // arguments are plain integers. The kernel only reads `attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const A,
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
pub(crate) fn classify(pid: i32, tid: i32, e: std::io::Error) -> Error {
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

// ---------------------------------------------------------------------------
// Sampling: the time of each return from and each entry into the wait calls.

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER3` (96 bytes): the
/// sampling events need `clockid` (CLOCK_MONOTONIC, so that sample times
/// compare with the watcher's own clock).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PerfEventAttrV3 {
    v0: PerfEventAttr,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
}

const PERF_ATTR_SIZE_VER3: u32 = 96;
const PERF_SAMPLE_TID: u64 = 1 << 1;
const PERF_SAMPLE_TIME: u64 = 1 << 2;
const PERF_SAMPLE_IDENTIFIER: u64 = 1 << 16;
/// `attr.flags` bits: `disabled` (bit 0), `use_clockid` (bit 25).
const ATTR_DISABLED: u64 = 1 << 0;
const ATTR_USE_CLOCKID: u64 = 1 << 25;
/// A `PERF_RECORD_LOST` record: samples the kernel dropped.
pub const PERF_RECORD_LOST: u32 = 2;
/// A `PERF_RECORD_SAMPLE` record.
pub const PERF_RECORD_SAMPLE: u32 = 9;
/// `_IO('$', 0)`, `_IO('$', 1)`, `_IO('$', 5)`, `_IOR('$', 7, u64)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
const PERF_EVENT_IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
const PERF_EVENT_IOC_ID: libc::c_ulong = 0x8008_2407;
/// Offsets of `data_head` / `data_tail` in `struct perf_event_mmap_page`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;

/// Data pages of one sampler's ring buffer (a power of two): 16 pages of
/// 4 KiB hold 2048 records of 32 bytes, 1024 iterations — the watcher drains
/// it every few ms while a window is on; what does not fit is counted by the
/// kernel as lost, never grown. Small also for `perf_event_mlock_kb` (516 KiB
/// per user by default when not root).
pub const RING_PAGES: usize = 16;

/// Which edge of a wait call a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// `sys_enter_*`: the thread enters its wait call (an iteration ends).
    Enter,
    /// `sys_exit_*`: it returns from it (an iteration starts).
    Exit,
}

/// One record of the ring buffer, as [`parse_ring`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingRecord {
    /// A sample: the event's id (`PERF_EVENT_IOC_ID`), the thread, the time
    /// (CLOCK_MONOTONIC ns).
    Sample {
        /// The id of the event that fired.
        id: u64,
        /// The thread it fired on.
        tid: u32,
        /// When.
        time_ns: u64,
    },
    /// The kernel dropped this many samples (the ring was full).
    Lost(u64),
    /// Any other record (throttling, ...): a gap in the sequence too.
    Other,
}

/// The records of a ring buffer's unread bytes (made contiguous by the
/// reader), each `(type, the whole record, header included)`: a record is
/// `{u32 type, u16 misc, u16 size}` then `size - 8` bytes. Stops at a record
/// whose size is under 8 or runs past the end (so at most `data.len() / 8`
/// records: never more than the bytes given). Shared by every ring parser
/// ([`parse_ring`], `syscount::parse_records`).
pub fn records(data: &[u8]) -> impl Iterator<Item = (u32, &[u8])> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let kind = u32_at(data, at)?;
        let size = usize::from(u16::from_ne_bytes(
            data.get(at + 6..at + 8)?.try_into().ok()?,
        ));
        if size < 8 {
            return None;
        }
        let rec = data.get(at..at.checked_add(size)?)?;
        at += size;
        Some((kind, rec))
    })
}

/// The native-endian `u32` at byte `i` of `rec`, if it is all there.
pub fn u32_at(rec: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        rec.get(i..i.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The native-endian `u64` at byte `i` of `rec`, if it is all there.
pub fn u64_at(rec: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        rec.get(i..i.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses the records of a ring written with `PERF_SAMPLE_IDENTIFIER | TID
/// | TIME` (see [`records`]): for a sample `u64 id, u32 pid, u32 tid, u64
/// time`; for `PERF_RECORD_LOST` `u64 id, u64 lost`.
pub fn parse_ring(data: &[u8]) -> Vec<RingRecord> {
    records(data)
        .map(|(kind, rec)| match kind {
            PERF_RECORD_SAMPLE if rec.len() >= 32 => {
                match (u64_at(rec, 8), u32_at(rec, 20), u64_at(rec, 24)) {
                    (Some(id), Some(tid), Some(time_ns)) => RingRecord::Sample { id, tid, time_ns },
                    _ => RingRecord::Other,
                }
            }
            PERF_RECORD_LOST => lost(rec),
            _ => RingRecord::Other,
        })
        .collect()
}

/// A `PERF_RECORD_LOST` record's count (`u64 id, u64 lost` after the
/// header); a record too short to hold it counts as [`RingRecord::Other`].
fn lost(rec: &[u8]) -> RingRecord {
    match u64_at(rec, 16) {
        Some(n) => RingRecord::Lost(n),
        None => RingRecord::Other,
    }
}

/// Busy times from a sequence of edges, in order: an iteration's busy time
/// is from a return ([`Edge::Exit`]) to the next entry ([`Edge::Enter`]).
/// A gap (lost samples, a window's end) forgets the pending return, so no
/// busy time ever spans unseen edges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BusyPairs {
    returned_ns: Option<u64>,
}

impl BusyPairs {
    /// Takes one edge; `Some(busy ns)` when it closes an iteration.
    pub fn edge(&mut self, edge: Edge, time_ns: u64) -> Option<u64> {
        match edge {
            Edge::Exit => {
                self.returned_ns = Some(time_ns);
                None
            }
            Edge::Enter => self.returned_ns.take().map(|r| time_ns.saturating_sub(r)),
        }
    }

    /// Forgets the pending return (a gap in the samples).
    pub fn gap(&mut self) {
        self.returned_ns = None;
    }

    /// When the thread last returned from its wait call and has not entered
    /// it again since, as far as the samples go.
    pub fn pending_since(&self) -> Option<u64> {
        self.returned_ns
    }
}

/// One thread's wait calls sampled: `sys_enter_*` and `sys_exit_*` of the
/// calls given, `sample_period` 1, into one ring buffer of [`RING_PAGES`];
/// created disabled, switched on and off by the watcher
/// ([`WaitSampler::enable`]) so that the target pays for samples only
/// during windows. Closed (and unmapped) on drop.
#[derive(Debug)]
pub struct WaitSampler {
    /// The group leader first (it owns the ring); every other one writes
    /// into it (`PERF_EVENT_IOC_SET_OUTPUT`).
    fds: Vec<File>,
    /// `(event id, edge)` of each event.
    ids: Vec<(u64, Edge)>,
    ring: Ring,
    on: bool,
}

/// The ring buffer of one perf event (a control page, then `data_len`
/// bytes of records): mapped on creation, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Ring {
    ring: *mut u8,
    ring_len: usize,
    data_len: usize,
    page: usize,
}

// SAFETY: the ring is a private mapping of this value only (never shared or
// aliased outside it); moving it to another thread moves the whole owner.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the ring of event `leader`: one control page and `pages` data
    /// pages (a power of two). `mmap` refused is the error (the locked-memory
    /// limit, `perf_event_mlock_kb`).
    pub(crate) fn map(leader: &File, pages: usize) -> std::io::Result<Ring> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let data_len = page * pages;
        let ring_len = page + data_len;
        // SAFETY: maps `ring_len` bytes of the leader's perf ring (a fresh
        // mapping chosen by the kernel: no existing memory is affected);
        // checked against MAP_FAILED below and unmapped once on drop.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                leader.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Ring {
            ring: ring.cast(),
            ring_len,
            data_len,
            page,
        })
    }

    /// Takes every byte written since the last drain (at most the ring's
    /// size), contiguous, and frees their space for the kernel.
    pub(crate) fn drain(&mut self) -> Vec<u8> {
        // SAFETY: `ring` maps at least one page (the control page) followed
        // by `data_len` bytes, alive until drop. data_head and data_tail are
        // 8-byte-aligned u64 words of the page-aligned control page that the
        // kernel updates concurrently: read and written only through
        // atomics, head with Acquire (the records before it are written),
        // tail with Release (we are done reading them).
        let (head_w, tail_w) = unsafe {
            (
                &*(self.ring.add(DATA_HEAD) as *const std::sync::atomic::AtomicU64),
                &*(self.ring.add(DATA_TAIL) as *const std::sync::atomic::AtomicU64),
            )
        };
        let head = head_w.load(std::sync::atomic::Ordering::Acquire);
        let tail = tail_w.load(std::sync::atomic::Ordering::Relaxed);
        let len = usize::try_from(head.wrapping_sub(tail))
            .unwrap_or(usize::MAX)
            .min(self.data_len);
        let mut bytes = Vec::with_capacity(len);
        let start = (tail % self.data_len as u64) as usize;
        let first = len.min(self.data_len - start);
        // SAFETY: both ranges lie inside the data area (`start + first <=
        // data_len`, `len - first <= data_len`), which the kernel does not
        // write between tail and head until we advance the tail.
        unsafe {
            let data = self.ring.add(self.page);
            bytes.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
            bytes.extend_from_slice(std::slice::from_raw_parts(data, len - first));
        }
        tail_w.store(
            tail.wrapping_add(len as u64),
            std::sync::atomic::Ordering::Release,
        );
        bytes
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `ring`/`ring_len` are the mapping made in `map`, unmapped
        // exactly once here; nothing refers to it after drop.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}

fn open_sampling(tid: i32, id: u64, group: Option<&File>) -> std::io::Result<OwnedFd> {
    let attr = PerfEventAttrV3 {
        v0: PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: PERF_ATTR_SIZE_VER3,
            config: id,
            sample_period: 1,
            sample_type: PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME,
            // The leader starts disabled (the window switches it on); the
            // others follow their leader.
            flags: ATTR_USE_CLOCKID | if group.is_none() { ATTR_DISABLED } else { 0 },
            // Never woken: the watcher polls the ring on its own clock.
            wakeup_events: 0,
            ..Default::default()
        },
        clockid: libc::CLOCK_MONOTONIC,
        ..Default::default()
    };
    perf_event_open(&attr, tid, group)
}

fn ioctl_arg(fd: &File, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: `fd` is an open perf event descriptor; `req` is one of the
    // perf ioctls that take an integer argument (ENABLE/DISABLE: flags,
    // SET_OUTPUT: a descriptor), so nothing is written through `arg`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn event_id(fd: &File) -> std::io::Result<u64> {
    let mut id = 0u64;
    // SAFETY: PERF_EVENT_IOC_ID writes one u64 through the pointer, which
    // points at `id`, alive and writable across the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ID as _, &mut id as *mut u64) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(id)
    }
}

impl WaitSampler {
    /// Opens the sampling events of thread `tid` for the wait calls named
    /// in `calls` (those of `tps` that have both tracepoints), disabled.
    /// Errors as [`WaitCounters::open`]; `mmap` refused (the locked-memory
    /// limit) is a permission error too.
    pub fn open(pid: i32, tid: i32, tps: &WaitTracepoints, calls: &[&str]) -> Result<WaitSampler> {
        let mut fds: Vec<File> = Vec::new();
        let mut edges = Vec::new();
        for &(name, enter) in tps.calls.iter().filter(|(c, _)| calls.contains(c)) {
            let Some(&(_, exit)) = tps.exits.iter().find(|(c, _)| *c == name) else {
                continue;
            };
            for (tp, edge) in [(enter, Edge::Enter), (exit, Edge::Exit)] {
                let fd = open_sampling(tid, tp, fds.first()).map_err(|e| classify(pid, tid, e))?;
                fds.push(File::from(fd));
                edges.push(edge);
            }
        }
        let Some(leader) = fds.first() else {
            return Err(Error::io(
                format!("sampling thread {tid} of {pid}"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no wait call to sample"),
            ));
        };
        let ring = Ring::map(leader, RING_PAGES).map_err(|e| classify(pid, tid, e))?;
        let mut s = WaitSampler {
            ids: Vec::with_capacity(fds.len()),
            fds,
            ring,
            on: false,
        };
        for (i, edge) in edges.into_iter().enumerate() {
            let fd = &s.fds[i];
            if i > 0 {
                let leader = s.fds[0].as_raw_fd() as libc::c_ulong;
                ioctl_arg(fd, PERF_EVENT_IOC_SET_OUTPUT, leader)
                    .map_err(|e| classify(pid, tid, e))?;
            }
            let id = event_id(fd).map_err(|e| classify(pid, tid, e))?;
            s.ids.push((id, edge));
        }
        Ok(s)
    }

    /// Switches sampling on (`true`) or off; the counters are untouched.
    pub fn enable(&mut self, on: bool) -> std::io::Result<()> {
        if on == self.on {
            return Ok(());
        }
        let Some(leader) = self.fds.first() else {
            return Ok(());
        };
        let req = if on {
            PERF_EVENT_IOC_ENABLE
        } else {
            PERF_EVENT_IOC_DISABLE
        };
        ioctl_arg(leader, req, 0)?;
        self.on = on;
        Ok(())
    }

    /// Whether sampling is on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The edge of a sample's event id.
    pub fn edge_of(&self, id: u64) -> Option<Edge> {
        self.ids.iter().find(|(i, _)| *i == id).map(|(_, e)| *e)
    }

    /// Takes every record written since the last drain out of the ring (at
    /// most the ring's size) and frees their space for the kernel.
    pub fn drain(&mut self) -> Vec<RingRecord> {
        parse_ring(&self.ring.drain())
    }
}

// ---------------------------------------------------------------------------
// Every system call of one thread: `raw_syscalls:sys_enter` (see
// `crate::syscount`, which decides when and reads the records).

const PERF_SAMPLE_RAW: u64 = 1 << 10;

/// One thread's `raw_syscalls:sys_enter` event, enabled at once: it counts
/// every entry; with a ring it also samples each one (`sample_period` 1,
/// `PERF_SAMPLE_RAW`: the tracepoint's record, which holds the call's
/// number). Closed and unmapped on drop.
#[derive(Debug)]
pub(crate) struct SysEnterEvent {
    fd: File,
    ring: Option<Ring>,
}

impl SysEnterEvent {
    /// Opens the event on thread `tid` for tracepoint `id`, sampling into a
    /// ring of `ring_pages` data pages when `ring_pages > 0`. A sampling
    /// event the kernel refuses (raw records need CAP_PERFMON or
    /// `perf_event_paranoid` -1) or a ring it will not map (the locked-memory
    /// limit) falls back to counting only: the count is what matters, the
    /// names are a bonus. Errors are the counting event's.
    pub(crate) fn open(tid: i32, id: u64, ring_pages: usize) -> std::io::Result<SysEnterEvent> {
        if ring_pages > 0 {
            let attr = PerfEventAttr {
                type_: PERF_TYPE_TRACEPOINT,
                size: PERF_ATTR_SIZE_VER0,
                config: id,
                sample_period: 1,
                sample_type: PERF_SAMPLE_RAW,
                // Enabled at once; never woken: the watcher drains the ring
                // at each snapshot. A full ring costs the thread only the
                // kernel's failed reservation (counted as lost).
                flags: 0,
                wakeup_events: 0,
                ..Default::default()
            };
            if let Ok(fd) = perf_event_open(&attr, tid, None) {
                let fd = File::from(fd);
                if let Ok(ring) = Ring::map(&fd, ring_pages) {
                    return Ok(SysEnterEvent {
                        fd,
                        ring: Some(ring),
                    });
                }
            }
        }
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: PERF_ATTR_SIZE_VER0,
            config: id,
            ..Default::default()
        };
        let fd = perf_event_open(&attr, tid, None)?;
        Ok(SysEnterEvent {
            fd: File::from(fd),
            ring: None,
        })
    }

    /// Entries counted so far (sampled or not).
    pub(crate) fn count(&self) -> std::io::Result<u64> {
        let mut buf = [0u8; 8];
        let n = (&self.fd).read(&mut buf)?;
        parse_count(&buf[..n])
            .ok_or_else(|| std::io::Error::other(format!("short perf read ({n} bytes)")))
    }

    /// Whether entries are sampled (a ring is mapped).
    pub(crate) fn samples(&self) -> bool {
        self.ring.is_some()
    }

    /// The ring's unread bytes (empty without a ring).
    pub(crate) fn drain(&mut self) -> Vec<u8> {
        self.ring.as_mut().map(Ring::drain).unwrap_or_default()
    }
}

/// Parses a plain counting read (no `read_format`): one native-endian u64.
pub fn parse_count(data: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(data.get(..8)?.try_into().ok()?))
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
    fn counts_parse() {
        assert_eq!(parse_count(&42u64.to_ne_bytes()), Some(42));
        assert_eq!(parse_count(&[1, 2, 3]), None);
        assert_eq!(parse_count(&[]), None);
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

    /// A sample record as the kernel writes it on x86_64/aarch64 (little
    /// endian): type 9, misc 2, size 32, id, pid, tid, time.
    const SAMPLE: [u8; 32] = [
        9, 0, 0, 0, 2, 0, 32, 0, // header
        7, 0, 0, 0, 0, 0, 0, 0, // id 7
        0x10, 0x27, 0, 0, 0x11, 0x27, 0, 0, // pid 10000, tid 10001
        0x00, 0xe4, 0x0b, 0x54, 0x02, 0, 0, 0, // time 10_000_000_000
    ];
    /// A LOST record: type 2, size 24, id 7, lost 5.
    const LOST: [u8; 24] = [
        2, 0, 0, 0, 0, 0, 24, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[cfg(target_endian = "little")]
    #[test]
    fn ring_records_parse() {
        let mut d = SAMPLE.to_vec();
        d.extend_from_slice(&LOST);
        // A throttle record (type 5, size 24): skipped as a gap.
        d.extend_from_slice(&[5, 0, 0, 0, 0, 0, 24, 0]);
        d.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse_ring(&d),
            vec![
                RingRecord::Sample {
                    id: 7,
                    tid: 10001,
                    time_ns: 10_000_000_000
                },
                RingRecord::Lost(5),
                RingRecord::Other,
            ]
        );
        // Truncated, zero-sized, empty: nothing past what is whole.
        assert_eq!(parse_ring(&SAMPLE[..31]), vec![]);
        assert_eq!(parse_ring(&[9, 0, 0, 0, 0, 0, 0, 0]), vec![]);
        assert_eq!(parse_ring(&[]), vec![]);
        // A sample record too short for its fields is a gap, not a sample.
        let mut short = SAMPLE[..16].to_vec();
        short[6] = 16;
        assert_eq!(parse_ring(&short), vec![RingRecord::Other]);
    }

    #[test]
    fn busy_is_from_return_to_next_entry_and_gaps_forget() {
        let mut p = BusyPairs::default();
        // An entry with no return seen first (the window opened mid-iteration).
        assert_eq!(p.edge(Edge::Enter, 100), None);
        assert_eq!(p.edge(Edge::Exit, 150), None);
        assert_eq!(p.pending_since(), Some(150));
        assert_eq!(p.edge(Edge::Enter, 400), Some(250));
        assert_eq!(p.edge(Edge::Exit, 500), None);
        p.gap();
        assert_eq!(p.edge(Edge::Enter, 900), None);
        // Two returns in a row (an entry lost): the later one counts.
        p.edge(Edge::Exit, 1000);
        p.edge(Edge::Exit, 1100);
        assert_eq!(p.edge(Edge::Enter, 1150), Some(50));
    }

    #[test]
    fn attr_v3_is_96_bytes() {
        assert_eq!(
            std::mem::size_of::<PerfEventAttrV3>(),
            PERF_ATTR_SIZE_VER3 as usize
        );
    }
}
