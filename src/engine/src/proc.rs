//! Pure parsers of `/proc/PID/{maps,status,stat,timens_offsets}` and thin
//! readers around them.
//!
//! The parsers take the raw bytes of a file and never panic: malformed lines
//! are skipped, missing fields take their default, numbers that do not fit are
//! treated as malformed. The readers only open, read (capped at
//! [`MAX_PROC_FILE`]) and map errors to [`Error`].

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest /proc file we read, in bytes (a `maps` file of a process with a
/// million mappings is about 100 MiB; beyond this we keep the first part).
pub const MAX_PROC_FILE: u64 = 128 << 20;

/// Largest number of directory entries [`list_tasks`] and [`list_pids`] return.
pub const MAX_DIR_ENTRIES: usize = 1 << 22;

/// Bit of `CapEff` for `CAP_SYS_PTRACE`.
pub const CAP_SYS_PTRACE_BIT: u32 = 19;

/// The `PF_KTHREAD` bit of the `flags` field of `/proc/PID/stat`.
pub const PF_KTHREAD: u32 = 0x0020_0000;

// ---------------------------------------------------------------------------
// maps

/// What a mapping maps, from the last column of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapPath {
    /// Anonymous memory (no name).
    None,
    /// A file. The path is the kernel's view in the target's mount namespace.
    File {
        /// The path (raw bytes; `\012` escapes turned back into newlines).
        path: PathBuf,
        /// Whether the kernel marked it ` (deleted)` (suffix stripped from `path`).
        deleted: bool,
    },
    /// A pseudo name: `[stack]`, `[heap]`, `[vdso]`, `[vvar]`, `[anon:NAME]`,
    /// `anon_inode:...` and anything else that does not start with `/`.
    Special(String),
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Shared (`s`) rather than private (`p`).
    pub shared: bool,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Device (major, minor) of the file.
    pub dev: (u32, u32),
    /// Inode of the file (0 for anonymous memory).
    pub inode: u64,
    /// What is mapped.
    pub path: MapPath,
}

impl MapEntry {
    /// Whether `addr` lies in `[start, end)`.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Parses `/proc/PID/maps`. Malformed lines are skipped.
pub fn parse_maps(data: &[u8]) -> Vec<MapEntry> {
    data.split(|&b| b == b'\n')
        .filter_map(parse_maps_line)
        .collect()
}

/// Splits off the next space-delimited field, skipping leading spaces.
fn next_field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = s.iter().position(|&b| b != b' ')?;
    let s = s.get(start..)?;
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    Some((s.get(..end)?, s.get(end..)?))
}

fn parse_hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn parse_hex_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

fn parse_dec<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn parse_maps_line(line: &[u8]) -> Option<MapEntry> {
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (offset, rest) = next_field(rest)?;
    let (dev, rest) = next_field(rest)?;
    let (inode, rest) = next_field(rest)?;

    let dash = range.iter().position(|&b| b == b'-')?;
    let start = parse_hex_u64(range.get(..dash)?)?;
    let end = parse_hex_u64(range.get(dash.checked_add(1)?..)?)?;
    if end < start {
        return None;
    }
    let &[r, w, x, s] = perms else {
        return None;
    };
    let colon = dev.iter().position(|&b| b == b':')?;
    let major = parse_hex_u32(dev.get(..colon)?)?;
    let minor = parse_hex_u32(dev.get(colon.checked_add(1)?..)?)?;

    // The path starts after the padding; it may contain spaces.
    let path_start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let raw_path = rest.get(path_start..)?;
    Some(MapEntry {
        start,
        end,
        read: r == b'r',
        write: w == b'w',
        exec: x == b'x',
        shared: s == b's',
        offset: parse_hex_u64(offset)?,
        dev: (major, minor),
        inode: parse_dec(inode)?,
        path: parse_map_path(raw_path),
    })
}

const DELETED_SUFFIX: &[u8] = b" (deleted)";

fn parse_map_path(raw: &[u8]) -> MapPath {
    if raw.is_empty() {
        return MapPath::None;
    }
    if raw.first() != Some(&b'/') {
        return MapPath::Special(String::from_utf8_lossy(raw).into_owned());
    }
    let (raw, deleted) = match raw.strip_suffix(DELETED_SUFFIX) {
        Some(stripped) => (stripped, true),
        None => (raw, false),
    };
    MapPath::File {
        path: PathBuf::from(OsStr::from_bytes(&unescape_newlines(raw))),
        deleted,
    }
}

/// The kernel prints a newline in a path as `\012`; turn it back.
fn unescape_newlines(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(b"\\012") {
            out.push(b'\n');
            rest = after;
        } else if let Some((&b, after)) = rest.split_first() {
            out.push(b);
            rest = after;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// status

/// Fields of `/proc/PID/status` the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `Name:` (the comm, as the kernel escapes it in this file).
    pub name: String,
    /// First letter of `State:` (`?` if missing).
    pub state: char,
    /// `Tgid:`.
    pub tgid: i32,
    /// `PPid:`.
    pub ppid: i32,
    /// `TracerPid:` (0: not traced).
    pub tracer_pid: i32,
    /// `Uid:` real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Threads:`.
    pub threads: u32,
    /// `CapEff:` effective capabilities.
    pub cap_eff: u64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            name: String::new(),
            state: '?',
            tgid: 0,
            ppid: 0,
            tracer_pid: 0,
            uid: [0; 4],
            threads: 0,
            cap_eff: 0,
        }
    }
}

impl Status {
    /// Whether `CapEff` holds `CAP_SYS_PTRACE`.
    pub fn has_cap_sys_ptrace(&self) -> bool {
        self.cap_eff & (1u64 << CAP_SYS_PTRACE_BIT) != 0
    }
}

/// Parses `/proc/PID/status`. Missing or malformed fields keep their default.
pub fn parse_status(data: &[u8]) -> Status {
    let mut st = Status::default();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Some(key), Some(value)) = (line.get(..colon), line.get(colon.saturating_add(1)..))
        else {
            continue;
        };
        let trimmed = value.trim_ascii();
        match key {
            b"Name" => {
                let v = value.strip_prefix(b"\t").unwrap_or(value);
                st.name = String::from_utf8_lossy(v).into_owned();
            }
            b"State" => {
                if let Some(&c) = trimmed.first() {
                    if c.is_ascii_graphic() {
                        st.state = char::from(c);
                    }
                }
            }
            b"Tgid" => st.tgid = parse_dec(trimmed).unwrap_or(0),
            b"PPid" => st.ppid = parse_dec(trimmed).unwrap_or(0),
            b"TracerPid" => st.tracer_pid = parse_dec(trimmed).unwrap_or(0),
            b"Threads" => st.threads = parse_dec(trimmed).unwrap_or(0),
            b"CapEff" => st.cap_eff = parse_hex_u64(trimmed).unwrap_or(0),
            b"Uid" => {
                let mut uid = [0u32; 4];
                let mut fields = trimmed
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|f| !f.is_empty());
                for slot in uid.iter_mut() {
                    *slot = fields.next().and_then(parse_dec).unwrap_or(0);
                }
                st.uid = uid;
            }
            _ => {}
        }
    }
    st
}

// ---------------------------------------------------------------------------
// NSpid

/// Deepest nesting of PID namespaces the kernel allows (`MAX_PID_NS_LEVEL`)
/// plus the root: no `NSpid:` line is longer.
pub const MAX_NSPID_LEVELS: usize = 33;

/// Parses the `NSpid:` line of `/proc/PID/status` (or
/// `/proc/PID/task/TID/status`): the id of the process (thread) in each PID
/// namespace, from the one of the reading `/proc` mount down to the
/// process's own. Returns `None` when the line is missing (kernel before
/// 4.1), empty, longer than [`MAX_NSPID_LEVELS`] or not all positive numbers.
pub fn parse_nspid(data: &[u8]) -> Option<Vec<i32>> {
    let line = data
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"NSpid:"))?;
    let mut ids = Vec::new();
    for field in line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
    {
        if ids.len() == MAX_NSPID_LEVELS {
            return None;
        }
        ids.push(parse_dec::<i32>(field).filter(|&n| n > 0)?);
    }
    (!ids.is_empty()).then_some(ids)
}

// ---------------------------------------------------------------------------
// stat

/// Fields of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The comm, raw (may contain anything but NUL, including `) ` and newlines).
    pub comm: String,
    /// State letter.
    pub state: char,
    /// Parent PID.
    pub ppid: i32,
    /// Kernel `PF_*` flags (see [`PF_KTHREAD`]).
    pub flags: u32,
    /// User CPU time in clock ticks.
    pub utime_ticks: u64,
    /// System CPU time in clock ticks.
    pub stime_ticks: u64,
    /// Start time after boot in clock ticks.
    pub start_time_ticks: u64,
}

impl Stat {
    /// Whether this is a kernel thread (it has no user memory).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses `/proc/PID/stat`. The comm lies between the first `(` and the last
/// `)`. Returns `None` if a needed field is missing or malformed.
pub fn parse_stat(data: &[u8]) -> Option<Stat> {
    let open = data.iter().position(|&b| b == b'(')?;
    let close = data.iter().rposition(|&b| b == b')')?;
    let comm = data.get(open.checked_add(1)?..close)?;
    let rest = data.get(close.checked_add(1)?..)?;
    let mut fields = rest
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    // Fields after the comm, numbered from 0 (= field 3 of proc(5)).
    let state_field = fields.next()?;
    let state = match state_field {
        [c] if c.is_ascii_graphic() => char::from(*c),
        _ => return None,
    };
    let ppid = parse_dec(fields.next()?)?;
    // pgrp, session, tty_nr, tpgid
    let mut fields = fields.skip(4);
    let flags = parse_dec(fields.next()?)?;
    // minflt, cminflt, majflt, cmajflt
    let mut fields = fields.skip(4);
    let utime_ticks = parse_dec(fields.next()?)?;
    let stime_ticks = parse_dec(fields.next()?)?;
    // cutime, cstime, priority, nice, num_threads, itrealvalue
    let mut fields = fields.skip(6);
    let start_time_ticks = parse_dec(fields.next()?)?;
    Some(Stat {
        comm: String::from_utf8_lossy(comm).into_owned(),
        state,
        ppid,
        flags,
        utime_ticks,
        stime_ticks,
        start_time_ticks,
    })
}

// ---------------------------------------------------------------------------
// timens_offsets

/// Offsets of the target's time namespace relative to the host's clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeOffsets {
    /// Added to the host's CLOCK_MONOTONIC, in ns.
    pub monotonic_ns: i64,
    /// Added to the host's CLOCK_BOOTTIME, in ns.
    pub boottime_ns: i64,
}

/// Parses `/proc/PID/timens_offsets` (`monotonic <secs> <nanosecs>` and
/// `boottime <secs> <nanosecs>`, clock ids 1 and 7 accepted too). Missing or
/// malformed lines count as 0; results saturate instead of overflowing.
pub fn parse_timens_offsets(data: &[u8]) -> TimeOffsets {
    let mut out = TimeOffsets::default();
    for line in data.split(|&b| b == b'\n') {
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(clock), Some(secs), Some(nsecs)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Some(secs), Some(nsecs)) = (parse_dec::<i64>(secs), parse_dec::<i64>(nsecs)) else {
            continue;
        };
        let ns = secs.saturating_mul(1_000_000_000).saturating_add(nsecs);
        match clock {
            b"monotonic" | b"1" => out.monotonic_ns = ns,
            b"boottime" | b"7" => out.boottime_ns = ns,
            _ => {}
        }
    }
    out
}

/// A human name for a process state letter of `/proc/PID/stat`.
pub fn state_name(c: char) -> &'static str {
    match c {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk sleep",
        'T' => "stopped",
        't' => "tracing stop",
        'Z' => "zombie",
        'X' => "dead",
        'I' => "idle",
        'P' => "parked",
        'W' => "waking",
        'K' => "wakekill",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------
// permission hint

/// Composes [`permission_hint`]'s sentence from facts (pure).
///
/// - `have_cap_sys_ptrace`: whether we hold `CAP_SYS_PTRACE`;
/// - `our_uid`: our effective uid;
/// - `target_uids`: the target's real, effective, saved and fs uids, if known;
/// - `ptrace_scope`: `kernel.yama.ptrace_scope`, if Yama is present.
pub fn compose_permission_hint(
    have_cap_sys_ptrace: bool,
    our_uid: u32,
    target_uids: Option<[u32; 4]>,
    ptrace_scope: Option<u32>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    // ptrace access needs our uid to match the target's real, effective and saved uids.
    let differing_uid = target_uids.map(|u| u.iter().take(3).copied().find(|&t| t != our_uid));
    if have_cap_sys_ptrace {
        match ptrace_scope {
            Some(3) => {}
            _ => parts.push(
                "we hold CAP_SYS_PTRACE, so a security module (AppArmor, SELinux, Landlock) or a seccomp \
                 filter probably refuses ptrace access; check the audit log"
                    .to_string(),
            ),
        }
    } else {
        let root =
            "as root with CAP_SYS_PTRACE (e.g. `sudo`, or `--cap-add=SYS_PTRACE` in a container)";
        match differing_uid {
            Some(Some(theirs)) => parts.push(format!(
                "the target runs as uid {theirs} and we run as uid {our_uid}: run as the same user \
                 as the target or {root}"
            )),
            Some(None) => parts.push(format!(
                "we lack CAP_SYS_PTRACE and the target runs as our uid {our_uid} but may be \
                 non-dumpable (setuid/setcap binary, or prctl(PR_SET_DUMPABLE, 0)): run {root}"
            )),
            _ => parts.push(format!(
                "we lack CAP_SYS_PTRACE: run as the same user as the target or {root}"
            )),
        }
    }
    match ptrace_scope {
        Some(1) if !have_cap_sys_ptrace => parts.push(
            "kernel.yama.ptrace_scope=1 also restricts reading to descendants and to processes \
             that called prctl(PR_SET_PTRACER) (set it to 0, or use CAP_SYS_PTRACE)"
                .to_string(),
        ),
        Some(2) if !have_cap_sys_ptrace => parts.push(
            "kernel.yama.ptrace_scope=2 requires CAP_SYS_PTRACE even for the same user".to_string(),
        ),
        Some(3) => parts.push(
            "kernel.yama.ptrace_scope=3 disables ptrace access entirely, even for root; only a \
             reboot lifts it"
                .to_string(),
        ),
        _ => {}
    }
    parts.join("; ")
}

/// A sentence naming what to do when reading or tracing `pid` was refused:
/// reads `/proc/self/status`, `/proc/PID/status` and
/// `/proc/sys/kernel/yama/ptrace_scope`, then calls [`compose_permission_hint`].
pub fn permission_hint(pid: i32) -> String {
    let ours = read_small(Path::new("/proc/self/status"))
        .map(|d| parse_status(&d))
        .unwrap_or_default();
    let target_uids = read_small(&proc_path(pid, "status"))
        .ok()
        .map(|d| parse_status(&d).uid);
    let ptrace_scope = read_small(Path::new("/proc/sys/kernel/yama/ptrace_scope"))
        .ok()
        .and_then(|d| parse_dec(d.trim_ascii()));
    compose_permission_hint(
        ours.has_cap_sys_ptrace(),
        ours.uid.get(1).copied().unwrap_or_default(),
        target_uids,
        ptrace_scope,
    )
}

// ---------------------------------------------------------------------------
// readers

fn proc_path(pid: i32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads at most `cap` bytes of `path`: every reader of `/proc` and cgroup
/// files bounds what it reads, so a hostile `/proc` (FUSE, bind mounts) cannot
/// make it read without end. The buffer starts at up to 64 KiB: one read
/// where a small buffer would take several, and each read of a generated
/// file (a socket table) redoes the kernel's walk.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let start = usize::try_from(cap.min(64 << 10)).unwrap_or(0);
    let mut out = Vec::with_capacity(start);
    std::fs::File::open(path)?.take(cap).read_to_end(&mut out)?;
    Ok(out)
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    read_capped(path, MAX_PROC_FILE)
}

/// Maps an I/O error about process `pid` to the engine's [`Error`]:
/// ENOENT/ESRCH → [`Error::NoSuchProcess`], EACCES/EPERM →
/// [`Error::PermissionDenied`], anything else → [`Error::Io`] with `context`.
pub fn map_io_error(pid: i32, context: impl Into<String>, err: std::io::Error) -> Error {
    match err.raw_os_error() {
        Some(libc_errno) if libc_errno == nix::libc::ENOENT || libc_errno == nix::libc::ESRCH => {
            Error::NoSuchProcess { pid }
        }
        Some(libc_errno) if libc_errno == nix::libc::EACCES || libc_errno == nix::libc::EPERM => {
            Error::PermissionDenied {
                pid,
                hint: permission_hint(pid),
            }
        }
        _ => Error::io(context, err),
    }
}

fn read_proc(pid: i32, file: &str) -> Result<Vec<u8>> {
    let path = proc_path(pid, file);
    read_small(&path).map_err(|e| map_io_error(pid, format!("reading {}", path.display()), e))
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>> {
    Ok(parse_maps(&read_proc(pid, "maps")?))
}

/// Reads and parses `/proc/PID/status`.
pub fn read_status(pid: i32) -> Result<Status> {
    Ok(parse_status(&read_proc(pid, "status")?))
}

fn stat_or_error(pid: i32, file: &str, data: &[u8]) -> Result<Stat> {
    parse_stat(data).ok_or_else(|| {
        Error::io(
            format!("parsing /proc/{pid}/{file}"),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected format"),
        )
    })
}

/// Reads and parses `/proc/PID/stat`.
pub fn read_stat(pid: i32) -> Result<Stat> {
    stat_or_error(pid, "stat", &read_proc(pid, "stat")?)
}

/// Reads and parses `/proc/PID/task/TID/stat`.
pub fn read_task_stat(pid: i32, tid: i32) -> Result<Stat> {
    let file = format!("task/{tid}/stat");
    stat_or_error(pid, &file, &read_proc(pid, &file)?)
}

/// The `NSpid:` ids of thread `tid` of `pid` (see [`parse_nspid`]): first
/// the id in our `/proc`, last the id the thread itself sees (`gettid()`).
pub fn read_task_nspid(pid: i32, tid: i32) -> Result<Option<Vec<i32>>> {
    Ok(parse_nspid(&read_proc(pid, &format!("task/{tid}/status"))?))
}

/// The name of thread `tid` of `pid` (`/proc/PID/task/TID/comm` without the
/// newline); empty if it cannot be read.
pub fn read_task_comm(pid: i32, tid: i32) -> String {
    read_small(&proc_path(pid, &format!("task/{tid}/comm")))
        .map(|d| {
            let d = d.strip_suffix(b"\n").unwrap_or(&d);
            String::from_utf8_lossy(d).into_owned()
        })
        .unwrap_or_default()
}

fn numeric_dir_entries(path: &Path) -> std::io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let Ok(entry) = entry else { continue };
        if let Some(n) = parse_dec::<i32>(entry.file_name().as_bytes()) {
            if n > 0 {
                out.push(n);
            }
        }
        if out.len() >= MAX_DIR_ENTRIES {
            break;
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Parses `/proc/PID/task/TID/wchan`: a kernel function name, or `None`
/// for `0`/empty (running, or hidden by the kernel).
pub fn parse_wchan(data: &[u8]) -> Option<String> {
    let name = data.trim_ascii();
    if name.is_empty() || name == b"0" || name.len() > 128 {
        return None;
    }
    Some(String::from_utf8_lossy(name).into_owned())
}

/// Parses `/proc/PID/task/TID/stack` (`[<0>] do_wait+0x1a5/0x2b0` per line):
/// the function names, innermost first, at most
/// [`crate::snapshot::KernelWait::MAX_FRAMES`], each at most 128 bytes.
pub fn parse_kernel_stack(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if out.len() >= crate::snapshot::KernelWait::MAX_FRAMES {
            break;
        }
        let line = line.trim_ascii();
        // Strip the "[<address>] " prefix.
        let rest = match line.iter().position(|&b| b == b']') {
            Some(i) if line.starts_with(b"[") => line[i + 1..].trim_ascii(),
            _ => line,
        };
        let name = rest
            .split(|&b| b == b'+' || b == b' ')
            .next()
            .unwrap_or(b"");
        if name.is_empty() {
            continue;
        }
        let name = &name[..name.len().min(128)];
        out.push(String::from_utf8_lossy(name).into_owned());
    }
    out
}

/// Where thread `tid` of `pid` waits in the kernel; fields left empty where
/// unreadable (the stack needs root).
pub fn read_kernel_wait(pid: i32, tid: i32) -> crate::snapshot::KernelWait {
    crate::snapshot::KernelWait {
        wchan: read_small(&proc_path(pid, &format!("task/{tid}/wchan")))
            .ok()
            .and_then(|d| parse_wchan(&d)),
        stack: read_small(&proc_path(pid, &format!("task/{tid}/stack")))
            .map(|d| parse_kernel_stack(&d))
            .unwrap_or_default(),
    }
}

/// The thread ids of `pid`, sorted (from `/proc/PID/task`).
pub fn list_tasks(pid: i32) -> Result<Vec<i32>> {
    let path = proc_path(pid, "task");
    numeric_dir_entries(&path)
        .map_err(|e| map_io_error(pid, format!("listing {}", path.display()), e))
}

/// Every PID on the host (visible in our /proc), sorted; empty if /proc
/// cannot be listed.
pub fn list_pids() -> Vec<i32> {
    numeric_dir_entries(Path::new("/proc")).unwrap_or_default()
}

/// The target's executable (`readlink /proc/PID/exe`; a deleted file keeps
/// the kernel's ` (deleted)` suffix). `None` if unreadable (kernel thread,
/// exited, no permission).
pub fn read_exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(proc_path(pid, "exe")).ok()
}

/// Time-namespace offsets of `pid`; zero if the file is missing (kernel
/// without time namespaces) or unreadable.
pub fn read_timens_offsets(pid: i32) -> TimeOffsets {
    read_small(&proc_path(pid, "timens_offsets"))
        .map(|d| parse_timens_offsets(&d))
        .unwrap_or_default()
}

/// Our own time-namespace offsets (`/proc/self/timens_offsets`), zero if
/// unavailable.
pub fn read_own_timens_offsets() -> TimeOffsets {
    read_small(Path::new("/proc/self/timens_offsets"))
        .map(|d| parse_timens_offsets(&d))
        .unwrap_or_default()
}

/// The tracer holding `pid` (`TracerPid:` if non-zero) and its comm
/// (`"?"` if unreadable). `None` if not traced or unreadable.
pub fn tracer_of(pid: i32) -> Option<(i32, String)> {
    let status = read_status(pid).ok()?;
    if status.tracer_pid <= 0 {
        return None;
    }
    let tracer = status.tracer_pid;
    let name = read_small(&proc_path(tracer, "comm"))
        .ok()
        .map(|d| {
            let d = d.strip_suffix(b"\n").unwrap_or(&d);
            String::from_utf8_lossy(d).into_owned()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "?".to_string());
    Some((tracer, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &[u8] = b"\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1234                       /usr/bin/my prog
55d0c0a02000-55d0c0a05000 r-xp 00002000 fd:01 1234                       /usr/bin/my prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f0000100000-7f0000200000 rw-s 00000000 00:05 99                         /memfd:hb (deleted)
7ffd1a2b3000-7ffd1a2d4000 rw-p 00000000 00:00 0                          [stack]
7ffd1a3f0000-7ffd1a3f4000 r--p 00000000 00:00 0                          [vvar]
7ffd1a3f4000-7ffd1a3f6000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_basic() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 8);
        let first = &m[0];
        assert_eq!(first.start, 0x55d0c0a00000);
        assert_eq!(first.end, 0x55d0c0a02000);
        assert!(first.read && !first.write && !first.exec && !first.shared);
        assert_eq!(first.dev, (0xfd, 1));
        assert_eq!(first.inode, 1234);
        assert_eq!(
            first.path,
            MapPath::File {
                path: PathBuf::from("/usr/bin/my prog"),
                deleted: false
            }
        );
        assert_eq!(m[1].offset, 0x2000);
        assert!(m[1].exec);
        assert_eq!(m[2].path, MapPath::None);
        assert!(m[3].shared);
        assert_eq!(
            m[3].path,
            MapPath::File {
                path: PathBuf::from("/memfd:hb"),
                deleted: true
            }
        );
        assert_eq!(m[4].path, MapPath::Special("[stack]".into()));
        assert_eq!(m[6].path, MapPath::Special("[vdso]".into()));
        assert_eq!(m[7].end, 0xffffffffff601000);
        assert!(m[4].contains(0x7ffd1a2b3000) && !m[4].contains(0x7ffd1a2d4000));
    }

    #[test]
    fn maps_hostile() {
        let data: &[u8] = b"\
garbage
1000-2000 r-xp 00000000 08:01 12
1000-2000 r-xp 00000000 08:01 12 /ok
zzzz-2000 r-xp 00000000 08:01 12 /bad-hex
2000-1000 r-xp 00000000 08:01 12 /reversed
1000-2000 rxp 00000000 08:01 12 /short-perms
1000-2000 r-xp 00000000 0801 12 /no-colon
1000-2000 r-xp 00000000 08:01 99999999999999999999999 /huge-inode
10000000000000000-2000 r-xp 00000000 08:01 12 /huge-addr
1000-2000 r-xp 00000000 08:01 12 /non-utf8-\xff\xfe name
1000-2000 r-xp 00000000 08:01 12 /with\\012newline
1000-2000 r-xp 00000000 08:01 12 /x (deleted) (deleted)
-
1000-
1000-2000 r-xp 0000";
        let m = parse_maps(data);
        assert_eq!(m.len(), 5, "{m:#?}");
        assert_eq!(m[0].path, MapPath::None);
        assert_eq!(
            m[1].path,
            MapPath::File {
                path: "/ok".into(),
                deleted: false
            }
        );
        match &m[2].path {
            MapPath::File { path, .. } => {
                assert_eq!(path.as_os_str().as_bytes(), b"/non-utf8-\xff\xfe name")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m[3].path,
            MapPath::File {
                path: "/with\nnewline".into(),
                deleted: false
            }
        );
        assert_eq!(
            m[4].path,
            MapPath::File {
                path: "/x (deleted)".into(),
                deleted: true
            }
        );
        assert!(parse_maps(b"").is_empty());
        assert!(parse_maps(b"\n\n\n").is_empty());
    }

    const STATUS: &[u8] = b"Name:\tmy prog\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
Ngid:\t0\nPid:\t4242\nPPid:\t1\nTracerPid:\t77\nUid:\t1000\t1001\t1002\t1003\n\
Gid:\t1000\t1000\t1000\t1000\nThreads:\t9\nCapInh:\t0000000000000000\n\
CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n";

    #[test]
    fn status_basic() {
        let s = parse_status(STATUS);
        assert_eq!(s.name, "my prog");
        assert_eq!(s.state, 'S');
        assert_eq!(s.tgid, 4242);
        assert_eq!(s.ppid, 1);
        assert_eq!(s.tracer_pid, 77);
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(s.threads, 9);
        assert_eq!(s.cap_eff, 0x1ffffffffff);
        assert!(s.has_cap_sys_ptrace());
    }

    #[test]
    fn status_hostile() {
        let s = parse_status(b"");
        assert_eq!(s, Status::default());
        assert_eq!(s.state, '?');
        let s = parse_status(
            b"Name:\t) x\\n\nState:\nTgid:\t99999999999\nUid:\t5\nThreads\t3\nCapEff:\tzz\nPPid:\t-",
        );
        assert_eq!(s.name, ") x\\n");
        assert_eq!(s.state, '?');
        assert_eq!(s.tgid, 0);
        assert_eq!(s.uid, [5, 0, 0, 0]);
        assert_eq!(s.threads, 0);
        assert_eq!(s.cap_eff, 0);
        assert!(!s.has_cap_sys_ptrace());
        let s = parse_status(b"Name:\t\xff\xfe\nCapEff:\t0000000000080000");
        assert_eq!(s.name, "\u{fffd}\u{fffd}");
        assert!(s.has_cap_sys_ptrace());
    }

    #[test]
    fn nspid() {
        // A thread two namespaces deep (host, container, nested sandbox).
        let st = b"Name:\tworker\nTgid:\t15038\nNgid:\t0\nPid:\t15040\nPPid:\t15001\n\
NSpid:\t15040\t8\t3\nNSpgid:\t15038\t6\t1\n";
        assert_eq!(parse_nspid(st), Some(vec![15040, 8, 3]));
        // Same namespace as the reader: one id.
        assert_eq!(parse_nspid(b"NSpid:\t4242\n"), Some(vec![4242]));
        // NSpgid/NSsid must not be taken for NSpid; spaces as well as tabs.
        assert_eq!(
            parse_nspid(b"NSpgid:\t1 2\nNSpid:  7   1\nNSsid:\t9"),
            Some(vec![7, 1])
        );
        // Hostile or missing.
        assert_eq!(parse_nspid(b""), None);
        assert_eq!(parse_nspid(b"Pid:\t5\n"), None);
        assert_eq!(parse_nspid(b"NSpid:\n"), None);
        assert_eq!(parse_nspid(b"NSpid:\t5\tx\n"), None);
        assert_eq!(parse_nspid(b"NSpid:\t5\t-1\n"), None);
        assert_eq!(parse_nspid(b"NSpid:\t0\n"), None);
        assert_eq!(parse_nspid(b"NSpid:\t99999999999\n"), None);
        let deep: Vec<u8> = std::iter::once(&b"NSpid:"[..])
            .chain(std::iter::repeat(&b"\t1"[..]).take(MAX_NSPID_LEVELS))
            .flatten()
            .copied()
            .collect();
        assert_eq!(parse_nspid(&deep).map(|v| v.len()), Some(MAX_NSPID_LEVELS));
        let deeper = [&deep[..], b"\t1"].concat();
        assert_eq!(parse_nspid(&deeper), None);
    }

    const STAT: &[u8] = b"4242 (my prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
1234 567 0 0 20 0 9 0 987654 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_basic() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.comm, "my prog");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.flags, 4194560);
        assert!(!s.is_kernel_thread());
        assert_eq!(s.utime_ticks, 1234);
        assert_eq!(s.stime_ticks, 567);
        assert_eq!(s.start_time_ticks, 987654);
    }

    #[test]
    fn stat_hostile_comm() {
        let data = b"7 (a) S 1 (b\n) c) R 2 0 0 0 -1 2097216 0 0 0 0 5 6 0 0 20 0 1 0 42 0 0\n";
        let s = parse_stat(data).unwrap();
        assert_eq!(s.comm, "a) S 1 (b\n) c");
        assert_eq!(s.state, 'R');
        assert_eq!(s.ppid, 2);
        assert!(s.is_kernel_thread());
        assert_eq!(
            (s.utime_ticks, s.stime_ticks, s.start_time_ticks),
            (5, 6, 42)
        );
        let s = parse_stat(b"7 (\xff) R 2 0 0 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 42").unwrap();
        assert_eq!(s.comm, "\u{fffd}");
    }

    #[test]
    fn stat_hostile() {
        assert!(parse_stat(b"").is_none());
        assert!(parse_stat(b"7 (x").is_none());
        assert!(parse_stat(b"7 x) R 1").is_none());
        assert!(parse_stat(b")(").is_none());
        assert!(parse_stat(b"7 (x) R 1 0 0 0 -1 0 0 0 0 0 5 6 0 0 20 0 1").is_none());
        assert!(parse_stat(b"7 (x) RR 1 0 0 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 42").is_none());
        assert!(parse_stat(
            b"7 (x) R 1 0 0 0 -1 0 0 0 0 0 99999999999999999999999 6 0 0 20 0 1 0 42"
        )
        .is_none());
        let starttime = STAT.windows(6).position(|w| w == b"987654").unwrap();
        let truncated = &STAT[..starttime];
        assert!(parse_stat(truncated).is_none());
    }

    #[test]
    fn timens() {
        assert_eq!(parse_timens_offsets(b""), TimeOffsets::default());
        let t = parse_timens_offsets(b"monotonic          -5  123\nboottime   7 0\n");
        assert_eq!(t.monotonic_ns, -5_000_000_000 + 123);
        assert_eq!(t.boottime_ns, 7_000_000_000);
        let t =
            parse_timens_offsets(b"1 2 3\n7 -1 0\nmonotonic 99999999999999999999 0\nboottime x");
        assert_eq!(t.monotonic_ns, 2_000_000_003);
        assert_eq!(t.boottime_ns, -1_000_000_000);
        let t = parse_timens_offsets(b"monotonic 9223372036854775807 999999999\n");
        assert_eq!(t.monotonic_ns, i64::MAX);
    }

    #[test]
    fn kernel_wait_parsers() {
        let stack = b"[<0>] do_wait_for_vfork_done+0x5e/0x130\n[<0>] kernel_clone+0x1f9/0x400\n[<ffffffffa1>] __do_sys_vfork+0x4c/0x70\n\n";
        assert_eq!(
            parse_kernel_stack(stack),
            ["do_wait_for_vfork_done", "kernel_clone", "__do_sys_vfork"]
        );
        assert!(parse_kernel_stack(b"").is_empty());
        assert!(parse_kernel_stack(b"[<0>]\n[<0>] \n").is_empty());
        let many = b"[<0>] f+0x1/0x2\n".repeat(1000);
        assert_eq!(
            parse_kernel_stack(&many).len(),
            crate::snapshot::KernelWait::MAX_FRAMES
        );
        let long = [b'a'; 4000];
        assert_eq!(parse_kernel_stack(&long)[0].len(), 128);
        assert_eq!(
            parse_wchan(b"do_wait_for_vfork_done"),
            Some("do_wait_for_vfork_done".into())
        );
        assert_eq!(parse_wchan(b"0"), None);
        assert_eq!(parse_wchan(b""), None);
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name('R'), "running");
        assert_eq!(state_name('S'), "sleeping");
        assert_eq!(state_name('D'), "disk sleep");
        assert_eq!(state_name('T'), "stopped");
        assert_eq!(state_name('t'), "tracing stop");
        assert_eq!(state_name('Z'), "zombie");
        assert_eq!(state_name('X'), "dead");
        assert_eq!(state_name('I'), "idle");
        assert_eq!(state_name('?'), "unknown");
    }

    #[test]
    fn hints() {
        let h = compose_permission_hint(false, 1000, Some([0, 0, 0, 0]), None);
        assert!(h.contains("uid 0") && h.contains("same user") && h.contains("CAP_SYS_PTRACE"));
        assert!(h.contains("sudo") && h.contains("--cap-add=SYS_PTRACE"));
        let h = compose_permission_hint(false, 1000, Some([1000, 1000, 1000, 1000]), Some(1));
        assert!(h.contains("non-dumpable"));
        assert!(h.contains("ptrace_scope=1") && h.contains("descendants"));
        let h = compose_permission_hint(false, 1000, None, Some(2));
        assert!(h.contains("lack CAP_SYS_PTRACE") && h.contains("ptrace_scope=2"));
        let h = compose_permission_hint(true, 0, Some([0; 4]), Some(3));
        assert!(h.contains("ptrace_scope=3") && h.contains("reboot"));
        assert!(!h.contains("AppArmor"));
        let h = compose_permission_hint(true, 0, Some([0; 4]), Some(1));
        assert!(h.contains("AppArmor") && !h.contains("ptrace_scope"));
        // A differing saved uid counts as different.
        let h = compose_permission_hint(false, 1000, Some([1000, 1000, 0, 1000]), Some(0));
        assert!(
            h.contains("uid 0 and we") && !h.contains("ptrace_scope"),
            "{h}"
        );
    }

    #[test]
    fn readers_on_self() {
        let me = std::process::id() as i32;
        let maps = read_maps(me).unwrap();
        assert!(maps
            .iter()
            .any(|m| m.path == MapPath::Special("[stack]".into())));
        let st = read_status(me).unwrap();
        assert_eq!(st.tgid, me);
        let stat = read_stat(me).unwrap();
        assert_eq!(stat.ppid, st.ppid);
        let tasks = list_tasks(me).unwrap();
        assert!(tasks.contains(&me));
        let ts = read_task_stat(me, me).unwrap();
        assert_eq!(ts.ppid, st.ppid);
        assert!(!read_task_comm(me, me).is_empty());
        let ns = read_task_nspid(me, me).unwrap().expect("NSpid line");
        assert_eq!(ns.first(), Some(&me));
        assert!(!read_task_comm(me, me).ends_with('\n'));
        assert!(list_pids().contains(&me));
        assert!(read_exe(me).is_some());
        assert_eq!(read_timens_offsets(me), read_own_timens_offsets());
        assert!(tracer_of(me).is_none() || tracer_of(me).is_some());
        assert!(!permission_hint(me).is_empty());
    }

    #[test]
    fn readers_missing_process() {
        let pid = i32::MAX;
        assert!(matches!(read_maps(pid), Err(Error::NoSuchProcess { pid: p }) if p == pid));
        assert!(matches!(read_status(pid), Err(Error::NoSuchProcess { .. })));
        assert!(matches!(read_stat(pid), Err(Error::NoSuchProcess { .. })));
        assert!(matches!(list_tasks(pid), Err(Error::NoSuchProcess { .. })));
        assert!(read_exe(pid).is_none());
        assert_eq!(read_task_comm(pid, pid), "");
        assert!(tracer_of(pid).is_none());
        assert_eq!(read_timens_offsets(pid), TimeOffsets::default());
    }

    #[test]
    fn error_mapping() {
        let e = map_io_error(1, "x", std::io::Error::from_raw_os_error(nix::libc::EACCES));
        assert!(matches!(e, Error::PermissionDenied { pid: 1, .. }));
        let e = map_io_error(1, "x", std::io::Error::from_raw_os_error(nix::libc::ESRCH));
        assert!(matches!(e, Error::NoSuchProcess { pid: 1 }));
        let e = map_io_error(1, "x", std::io::Error::from_raw_os_error(nix::libc::EIO));
        assert!(matches!(e, Error::Io { .. }));
    }
}
