//! The capture side of a cause: what [`super::classify`] needs besides the
//! registers, read once the target runs again (nothing here runs while it is
//! stopped): fd link targets, the socket tables of the target's own network
//! namespace (`/proc/PID/net/*`), paths and timespecs in its memory, the
//! owner field of a glibc mutex, children, and the counters of a
//! [`Sample`].
//!
//! Everything goes through a [`Source`], so the readers are tested on
//! byte literals; [`Live`] reads a real process. Every read is bounded.

use std::io::Read;

use crate::mapped::MappedFile;
use crate::module::{Module, Modules};

use super::parse::{self, CgroupMount, CgroupVersion, FdLink, Proto, Socket, SocketTables};
use super::syscalls::{self, Arg, Call};
use super::{CgroupSample, Child, Facts, FdInfo, FdTarget, LockInfo, Sample, Sleep};

/// Largest `/proc` or cgroup file read (socket tables of a busy host are
/// the big ones: ~150 bytes per socket).
pub const MAX_FILE: u64 = 32 << 20;
/// Longest path read out of the target's memory.
pub const MAX_PATH: usize = 4096;
/// Most `pollfd` entries resolved.
pub const MAX_POLL_FDS: usize = 8;
/// Most cgroup levels sampled (the thread's group and its ancestors).
pub const MAX_CGROUP_DEPTH: usize = 8;
/// Most children looked at for a `wait4`.
pub const MAX_CHILDREN: usize = 4096;

/// Where the facts come from: a process's `/proc` files, other files, and
/// its memory.
pub trait Source {
    /// `/proc/PID/<rel>` (at most [`MAX_FILE`] bytes).
    fn proc_file(&self, rel: &str) -> Option<Vec<u8>>;
    /// The target of the link `/proc/PID/<rel>`.
    fn proc_link(&self, rel: &str) -> Option<Vec<u8>>;
    /// Any other file, by absolute path (cgroup files, our `mountinfo`,
    /// `/proc/CHILD/status`).
    fn file(&self, path: &str) -> Option<Vec<u8>>;
    /// Up to `buf.len()` bytes of the target's memory at `addr`; how many were read.
    fn read_memory(&self, addr: u64, buf: &mut [u8]) -> usize;
    /// Names of the entries of the directory `/proc/PID/<rel>` (at most
    /// [`MAX_CHILDREN`]).
    fn proc_dir(&self, rel: &str) -> Vec<String>;
    /// CLOCK_MONOTONIC now, ns.
    fn now_ns(&self) -> u64;
    /// CLOCK_BOOTTIME now, ns.
    fn boottime_ns(&self) -> Option<u64>;
}

/// A live process.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// Its pid.
    pub pid: i32,
}

fn read_bounded(path: &str) -> Option<Vec<u8>> {
    crate::proc::read_capped(std::path::Path::new(path), MAX_FILE).ok()
}

/// Reads a kernel-generated table (`/proc/PID/net/tcp`…) to its end, in
/// big reads, bounded by `MAX_FILE`. A short read is NOT the end here: a
/// seq_file read returns at most the kernel's one-page buffer of whole
/// records (~4 KiB of /proc/net/tcp, measured: 4050 of 13200 bytes), so
/// stopping at the first short read lost every socket past the first ~27
/// (a read then named `socket inode N` without its peer when many sockets
/// were open). Only a read of 0 bytes ends the table.
fn read_seq_file(path: &str) -> Option<Vec<u8>> {
    const CHUNK: usize = 256 << 10;
    let mut f = std::fs::File::open(path).ok()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    while (out.len() as u64) < MAX_FILE {
        let n = loop {
            match f.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        };
        if n == 0 {
            break;
        }
        let room = (MAX_FILE as usize).saturating_sub(out.len());
        out.extend_from_slice(buf.get(..n.min(room)).unwrap_or(&[]));
    }
    Some(out)
}

impl Source for Live {
    fn proc_file(&self, rel: &str) -> Option<Vec<u8>> {
        let path = format!("/proc/{}/{rel}", self.pid);
        if rel.starts_with("net/") {
            read_seq_file(&path)
        } else {
            read_bounded(&path)
        }
    }

    fn proc_link(&self, rel: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::read_link(format!("/proc/{}/{rel}", self.pid))
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec())
    }

    fn file(&self, path: &str) -> Option<Vec<u8>> {
        read_bounded(path)
    }

    fn read_memory(&self, addr: u64, buf: &mut [u8]) -> usize {
        crate::memory::read_into(self.pid, addr, buf).unwrap_or(0)
    }

    fn proc_dir(&self, rel: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/{rel}", self.pid)) else {
            return Vec::new();
        };
        dir.flatten()
            .take(MAX_CHILDREN)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    fn now_ns(&self) -> u64 {
        crate::target::monotonic_ns()
    }

    fn boottime_ns(&self) -> Option<u64> {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
        u64::try_from(t.tv_sec())
            .ok()?
            .checked_mul(1_000_000_000)?
            .checked_add(u64::try_from(t.tv_nsec()).ok()?)
    }
}

/// Reads facts of one target; caches what does not change within a
/// snapshot (socket tables, cgroup mounts). Make a new one per snapshot, or
/// call [`Collector::forget_sockets`].
#[derive(Debug)]
pub struct Collector<S: Source> {
    src: S,
    sockets: Option<SocketTables>,
    /// How many of the socket tables were read into `sockets`.
    tables_read: usize,
    /// The target's modules, as the snapshot captured them (for data
    /// symbols: one module model, one load bias, see [`crate::module`]).
    modules: Modules,
    /// Data symbols by the start of their module.
    symbols: std::collections::HashMap<u64, Option<ModuleSymbols>>,
    mounts: Option<Vec<CgroupMount>>,
}

impl<S: Source> Collector<S> {
    /// A collector reading from `src`, knowing no module (no data symbols).
    pub fn new(src: S) -> Collector<S> {
        Collector::with_modules(src, Modules::default())
    }

    /// A collector reading from `src`, naming data symbols from `modules`
    /// (a snapshot's [`crate::snapshot::ProcessSnapshot::modules`]).
    pub fn with_modules(src: S, modules: Modules) -> Collector<S> {
        Collector {
            src,
            sockets: None,
            tables_read: 0,
            modules,
            symbols: std::collections::HashMap::new(),
            mounts: None,
        }
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.src
    }

    /// Drops the cached socket tables (the next fd lookup reads them again).
    pub fn forget_sockets(&mut self) {
        self.sockets = None;
        self.tables_read = 0;
    }

    /// Counters of thread `tid` now.
    pub fn sample(&mut self, tid: i32) -> Sample {
        let at_ns = self.src.now_ns();
        let sched = self
            .src
            .proc_file(&format!("task/{tid}/schedstat"))
            .and_then(|d| parse::parse_schedstat(&d));
        let faults = self
            .src
            .proc_file(&format!("task/{tid}/stat"))
            .and_then(|d| parse::parse_fault_stat(&d));
        let cgroups = self.cgroups(tid);
        Sample {
            at_ns,
            sched,
            faults,
            cgroups,
        }
    }

    fn cgroups(&mut self, tid: i32) -> Vec<CgroupSample> {
        let Some(line) = self
            .src
            .proc_file(&format!("task/{tid}/cgroup"))
            .and_then(|d| parse::parse_proc_cgroup(&d))
        else {
            return Vec::new();
        };
        if self.mounts.is_none() {
            self.mounts = Some(
                self.src
                    .file("/proc/self/mountinfo")
                    .map(|d| parse::parse_cgroup_mounts(&d))
                    .unwrap_or_default(),
            );
        }
        let mounts = self.mounts.as_deref().unwrap_or_default();
        let Some(dir) = parse::cgroup_dir(&line, mounts) else {
            return Vec::new();
        };
        let root = mounts
            .iter()
            .filter(|m| m.version == line.version)
            .map(|m| m.mount_point.trim_end_matches('/').to_string())
            .find(|mp| dir.starts_with(mp.as_str()))
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut d = dir;
        // The group, then its ancestors below the hierarchy's root (the root
        // has no quota of its own).
        while d.len() > root.len() && out.len() < MAX_CGROUP_DEPTH {
            let stat = self
                .src
                .file(&format!("{d}/cpu.stat"))
                .map(|b| parse::parse_cpu_stat(&b))
                .unwrap_or_default();
            let quota = match line.version {
                CgroupVersion::V1 => self
                    .src
                    .file(&format!("{d}/cpu.cfs_quota_us"))
                    .zip(self.src.file(&format!("{d}/cpu.cfs_period_us")))
                    .and_then(|(q, p)| parse::parse_cfs_quota(&q, &p)),
                CgroupVersion::V2 => self
                    .src
                    .file(&format!("{d}/cpu.max"))
                    .and_then(|b| parse::parse_cpu_max(&b)),
            };
            let parent = d.rfind('/').map(|i| d[..i].to_string());
            out.push(CgroupSample {
                dir: d,
                version: line.version,
                stat,
                quota,
            });
            match parent {
                Some(p) => d = p,
                None => break,
            }
        }
        out
    }

    /// Facts for thread `tid`, which is in `call` (if any); `tids` are the
    /// threads of the process (a mutex owner must be one of them).
    pub fn facts(&mut self, tid: i32, call: Option<&Call>, tids: &[i32]) -> Facts {
        let mut facts = Facts::default();
        let Some(call) = call else {
            return facts;
        };
        let Some(name) = call.name else {
            return facts;
        };
        for &(i, role) in syscalls::arg_roles(name) {
            let Some(&a) = call.args.get(i) else { continue };
            match role {
                Arg::Fd => {
                    let fd = a as i32;
                    if fd >= 0 {
                        let target = self.fd_target(fd);
                        facts.fds.push(FdInfo { fd, target });
                    }
                }
                Arg::Path => facts.path = self.c_string(a),
                Arg::Timespec => {
                    facts.sleep = self.timespec(a).map(|ns| {
                        let clock = (name == "clock_nanosleep").then_some(call.args[0]);
                        let absolute = name == "clock_nanosleep" && call.args[1] & 1 != 0;
                        // The remainder pointer follows the request.
                        let rem = call.args.get(i + 1).copied();
                        let remaining_ns = if absolute {
                            self.clock_now(call.args[0])
                                .map(|now| ns.saturating_sub(now))
                        } else if rem == Some(a) {
                            Some(ns)
                        } else {
                            None
                        };
                        Sleep {
                            ns,
                            absolute,
                            clock,
                            remaining_ns,
                        }
                    })
                }
                Arg::WaitPid => facts.child = Some(self.child(a as i32)),
                Arg::Futex => {
                    if syscalls::futex_waits(call.args[1]) {
                        facts.lock = Some(self.lock(tid, a, call.args[1], tids));
                    }
                }
                Arg::PollFds => {
                    let n = usize::try_from(call.args[1])
                        .unwrap_or(usize::MAX)
                        .min(MAX_POLL_FDS);
                    let mut buf = vec![0u8; n * 8];
                    let got = self.src.read_memory(a, &mut buf);
                    for entry in buf[..got - got % 8].chunks_exact(8) {
                        let fd = i32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                        if fd >= 0 {
                            let target = self.fd_target(fd);
                            facts.fds.push(FdInfo { fd, target });
                        }
                    }
                }
                Arg::TimeoutMs => facts.timeout_ms = Some(a as i32 as i64),
            }
        }
        facts
    }

    /// The target's reading of clock `id` now (CLOCK_REALTIME, or
    /// CLOCK_MONOTONIC / CLOCK_BOOTTIME shifted by its time namespace).
    fn clock_now(&self, id: u64) -> Option<u64> {
        let offsets = self
            .src
            .proc_file("timens_offsets")
            .map(|d| crate::proc::parse_timens_offsets(&d))
            .unwrap_or_default();
        match id {
            0 => u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos(),
            )
            .ok(),
            1 => self.src.now_ns().checked_add_signed(offsets.monotonic_ns),
            7 => self
                .src
                .boottime_ns()?
                .checked_add_signed(offsets.boottime_ns),
            _ => None,
        }
    }

    /// What fd `fd` of the target refers to.
    pub fn fd_target(&mut self, fd: i32) -> FdTarget {
        let Some(link) = self.src.proc_link(&format!("fd/{fd}")) else {
            return FdTarget::Unknown;
        };
        match parse::parse_fd_link(&link) {
            FdLink::Socket(inode) => self.socket(inode),
            FdLink::Pipe(i) => FdTarget::Pipe(i),
            FdLink::Anon(n) => FdTarget::Anon(n),
            FdLink::Path(p) => FdTarget::Path(p),
        }
    }

    fn socket(&mut self, inode: u64) -> FdTarget {
        // Generating a socket table costs the kernel a walk of its whole
        // hash (~1.7 ms per read on a 2-core VM whatever the socket count):
        // tables are read one at a time, most likely first, until the inode
        // is found, and kept for the rest of the snapshot.
        const TABLES: [&str; 5] = ["net/tcp", "net/tcp6", "net/unix", "net/udp", "net/udp6"];
        let tables = self.sockets.get_or_insert_with(SocketTables::default);
        while tables.get(inode).is_none() && self.tables_read < TABLES.len() {
            let file = TABLES[self.tables_read];
            self.tables_read += 1;
            let Some(d) = self.src.proc_file(file) else {
                continue;
            };
            match file {
                "net/unix" => tables.add_unix(parse::parse_unix_table(&d)),
                f if f.starts_with("net/tcp") => {
                    tables.add_inet(parse::parse_inet_table(&d, Proto::Tcp))
                }
                _ => tables.add_inet(parse::parse_inet_table(&d, Proto::Udp)),
            }
        }
        match self.sockets.as_ref().and_then(|t| t.get(inode)) {
            Some(Socket::Inet(s)) if s.proto == Proto::Tcp => FdTarget::Tcp {
                local: s.local,
                remote: s.remote,
                state: s.state_name(),
                rx_queue: s.rx_queue,
            },
            Some(Socket::Inet(s)) => FdTarget::Udp {
                local: s.local,
                remote: (s.remote.port() != 0).then_some(s.remote),
            },
            Some(Socket::Unix(u)) => FdTarget::Unix {
                path: u.path.clone(),
                connected: u.state == 3,
            },
            None => FdTarget::Socket(inode),
        }
    }

    /// A NUL-terminated string at `addr` (at most [`MAX_PATH`] bytes; an
    /// unterminated one is marked with `…`).
    pub fn c_string(&self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        let mut out = Vec::new();
        let mut at = addr;
        // Page by page: a path near the end of a mapping must not fail the
        // whole read.
        while out.len() < MAX_PATH {
            let page_left = 4096 - (at % 4096) as usize;
            let want = page_left.min(MAX_PATH - out.len());
            let mut buf = vec![0u8; want];
            let got = self.src.read_memory(at, &mut buf);
            if got == 0 {
                break;
            }
            if let Some(nul) = buf[..got].iter().position(|&b| b == 0) {
                out.extend_from_slice(&buf[..nul]);
                return Some(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&buf[..got]);
            at = at.saturating_add(got as u64);
            if got < want {
                break;
            }
        }
        if out.is_empty() {
            return None;
        }
        let mut s = String::from_utf8_lossy(&out).into_owned();
        s.push('…');
        Some(s)
    }

    /// A `struct timespec` at `addr`, in ns (`None` if unreadable or invalid).
    pub fn timespec(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 16];
        if self.src.read_memory(addr, &mut b) != 16 {
            return None;
        }
        let sec = i64::from_le_bytes(b[..8].try_into().ok()?);
        let nsec = i64::from_le_bytes(b[8..].try_into().ok()?);
        if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
            return None;
        }
        (sec as u64)
            .checked_mul(1_000_000_000)?
            .checked_add(nsec as u64)
    }

    /// What is known of a futex wait on `addr` by thread `waiter`.
    pub fn lock(&mut self, waiter: i32, addr: u64, op: u64, tids: &[i32]) -> LockInfo {
        let mut info = LockInfo {
            futex: addr,
            symbol: None,
            owner_tid: None,
            owner: None,
        };
        if addr % 4 == 0 {
            let mut b = [0u8; 20];
            let got = self.src.read_memory(addr, &mut b);
            info.owner_tid = mutex_owner(&b[..got], syscalls::futex_is_pi(op))
                .filter(|t| *t != waiter && tids.contains(t));
        }
        info.symbol = self.data_symbol(addr);
        info
    }

    /// The child a `wait4(pid, …)` waits for.
    fn child(&self, pid: i32) -> Child {
        let children = self.children();
        let name = if pid > 0 {
            children
                .iter()
                .find(|(_, ns_pid, _)| *ns_pid == pid)
                .map(|(_, _, n)| n.clone())
        } else {
            children.first().map(|(_, _, n)| n.clone())
        };
        Child { pid, name }
    }

    /// Children of the target: (pid here, pid in the target's namespace, name).
    fn children(&self) -> Vec<(i32, i32, String)> {
        let mut out = Vec::new();
        for tid in self.src.proc_dir("task") {
            let Some(list) = self.src.proc_file(&format!("task/{tid}/children")) else {
                continue;
            };
            for c in list
                .split(|b| b.is_ascii_whitespace())
                .filter_map(|s| std::str::from_utf8(s).ok()?.parse::<i32>().ok())
            {
                if out.len() >= MAX_CHILDREN {
                    return out;
                }
                let status = self.src.file(&format!("/proc/{c}/status"));
                let ns_pid = status.as_deref().and_then(ns_pid).unwrap_or(c);
                let name = self
                    .src
                    .file(&format!("/proc/{c}/comm"))
                    .map(|n| String::from_utf8_lossy(n.trim_ascii_end()).into_owned())
                    .unwrap_or_default();
                out.push((c, ns_pid, name));
            }
        }
        out
    }

    /// The data symbol of the module containing `addr` that covers it
    /// (`journal_lock`), for a futex word in a static. Each module's data
    /// symbols are read once per collector (a dump of many threads parked
    /// on futexes looks up many addresses).
    pub fn data_symbol(&mut self, addr: u64) -> Option<String> {
        // The module is the nearest one at or below the address (its .bss
        // may be an anonymous mapping past its last file mapping): the ELF
        // segments decide whether the address is its own.
        let i = self.modules.modules.partition_point(|m| m.start <= addr);
        let module = self.modules.modules.get(i.checked_sub(1)?)?;
        if !self.symbols.contains_key(&module.start) {
            if self.symbols.len() >= MAX_MODULES {
                return None;
            }
            let data = module_bytes(module).and_then(|mapped| {
                Some(ModuleSymbols {
                    bias: module.bias,
                    segments: crate::elf::load_segments(mapped.bytes()).ok()?,
                    symbols: crate::elf::data_symbols(mapped.bytes()),
                })
            });
            self.symbols.insert(module.start, data);
        }
        let m = self.symbols.get(&module.start)?.as_ref()?;
        let svma = addr.wrapping_sub(m.bias);
        if !m
            .segments
            .iter()
            .any(|s| s.vaddr <= svma && svma < s.vaddr.saturating_add(s.memsz))
        {
            return None;
        }
        symbol_covering(&m.symbols, svma)
    }
}

/// The bytes of a module: its file (opened at the capture), or its image.
fn module_bytes(m: &Module) -> Option<MappedFile> {
    match (&m.file, &m.image) {
        (Some(f), _) => MappedFile::map(f).ok(),
        (None, Some(image)) => Some(MappedFile::owned(image.to_vec())),
        (None, None) => None,
    }
}

/// Most modules whose symbols one collector keeps.
const MAX_MODULES: usize = 256;

/// The data symbols of one module.
#[derive(Debug)]
struct ModuleSymbols {
    bias: u64,
    segments: Vec<crate::elf::LoadSegment>,
    /// (address, size, raw name), sorted by address.
    symbols: Vec<crate::elf::DataSymbol>,
}

/// The `NSpid:` of a `status` file: the pid in the innermost namespace.
fn ns_pid(status: &[u8]) -> Option<i32> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"NSpid:"))?;
    line.split(|b| b.is_ascii_whitespace())
        .rfind(|s| !s.is_empty())
        .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
}

/// The owner of a glibc `pthread_mutex_t` from its first 20 bytes
/// (`__lock`, `__count`, `__owner`, `__nusers`, `__kind`), or of a
/// priority-inheritance futex (its word holds the owner's TID). `None` when
/// the bytes do not look like a held glibc mutex: a Rust `Mutex`, a
/// condition variable, a lock released meanwhile.
pub fn mutex_owner(bytes: &[u8], pi: bool) -> Option<i32> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    let lock = word(0)?;
    if pi {
        // FUTEX_TID_MASK.
        let tid = (lock & 0x3fff_ffff) as i32;
        return (tid > 0).then_some(tid);
    }
    let owner = word(8)? as i32;
    let nusers = word(12)?;
    let kind = word(16)?;
    // A held mutex: a non-zero lock word, an owner, at least one user, and a
    // kind made only of glibc's bits (type 0-3, robust 16, PI 32, PP 64,
    // pshared 128, elision 256/512).
    let plausible = lock != 0 && owner > 0 && (1..=1 << 16).contains(&nusers) && kind & !0x3f3 == 0;
    plausible.then_some(owner)
}

/// The (demangled) name of the symbol covering `svma`, `name+0xoff` inside it.
fn symbol_covering(symbols: &[crate::elf::DataSymbol], svma: u64) -> Option<String> {
    let i = symbols.partition_point(|s| s.address <= svma);
    // Symbols may nest (a struct and its fields): look a few back.
    let s = symbols[..i]
        .iter()
        .rev()
        .take(8)
        .find(|s| svma < s.address.saturating_add(s.size))?;
    let name = addr2line::demangle_auto(s.name.as_str().into(), None);
    let off = svma - s.address;
    Some(if off == 0 {
        name.to_string()
    } else {
        format!("{name}+0x{off:x}")
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{call, Fake};
    use super::*;

    #[test]
    fn a_read_on_a_tcp_socket() {
        let mut f = Fake::default();
        f.links.insert("fd/7".into(), b"socket:[31337]".to_vec());
        f.proc.insert(
            "net/tcp".into(),
            b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   1: 0100007F:9C56 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 31337 1 0 20 4 30 10 -1
"
            .to_vec(),
        );
        let mut c = Collector::new(f);
        let facts = c.facts(10, Some(&call("read", [7, 0x1000, 64, 0, 0, 0])), &[10]);
        assert_eq!(facts.fds.len(), 1);
        assert_eq!(
            facts.fds[0].to_string(),
            "fd 7: TCP 127.0.0.1:40022 -> 127.0.0.1:5432"
        );
        // An fd that is gone, and a pipe.
        c.src.links.insert("fd/3".into(), b"pipe:[99]".to_vec());
        assert_eq!(c.fd_target(3), FdTarget::Pipe(99));
        assert_eq!(c.fd_target(4), FdTarget::Unknown);
    }

    #[test]
    fn paths_and_sleeps_from_memory() {
        let mut f = Fake::default();
        let mut mem = b"/mnt/nfs/data.db\0junk".to_vec();
        mem.resize(64, 0);
        f.memory.push((0x1000, mem));
        let mut ts = 2u64.to_le_bytes().to_vec();
        ts.extend_from_slice(&5_000_000i64.to_le_bytes());
        f.memory.push((0x2000, ts));
        // Unterminated, ending at the edge of readable memory.
        f.memory.push((0x5000, vec![b'a'; 16]));
        let mut c = Collector::new(f);
        let facts = c.facts(
            1,
            Some(&call("openat", [0xffff_ff9c, 0x1000, 0, 0, 0, 0])),
            &[],
        );
        assert_eq!(facts.path.as_deref(), Some("/mnt/nfs/data.db"));
        let facts = c.facts(
            1,
            Some(&call("clock_nanosleep", [1, 0, 0x2000, 0x3000, 0, 0])),
            &[],
        );
        assert_eq!(
            facts.sleep,
            Some(Sleep {
                ns: 2_005_000_000,
                absolute: false,
                clock: Some(1),
                remaining_ns: None,
            })
        );
        // The remainder written over the request: what is read is what is left.
        let same = c.facts(
            1,
            Some(&call("nanosleep", [0x2000, 0x2000, 0, 0, 0, 0])),
            &[],
        );
        assert_eq!(same.sleep.unwrap().remaining_ns, Some(2_005_000_000));
        // Absolute, on CLOCK_MONOTONIC, in a time namespace 1 s ahead.
        c.src.now = 500_000_000;
        c.src.proc.insert(
            "timens_offsets".into(),
            b"monotonic 1 0\nboottime 0 0\n".to_vec(),
        );
        let abs = c.facts(
            1,
            Some(&call("clock_nanosleep", [1, 1, 0x2000, 0, 0, 0])),
            &[],
        );
        let s = abs.sleep.unwrap();
        assert!(s.absolute);
        assert_eq!(s.remaining_ns, Some(505_000_000));
        assert_eq!(c.c_string(0x5000).as_deref(), Some("aaaaaaaaaaaaaaaa…"));
        assert_eq!(c.c_string(0x9000), None);
        assert_eq!(c.timespec(0x9000), None);
    }

    #[test]
    fn glibc_mutex_owner() {
        // __lock 2 (contended), __count 0, __owner 4242, __nusers 1, __kind 0.
        let mut m = Vec::new();
        for v in [2u32, 0, 4242, 1, 0] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(mutex_owner(&m, false), Some(4242));
        // A Rust std Mutex<u64> holding 4242: the kind word is data, not glibc bits.
        let mut rust = Vec::new();
        for v in [2u32, 0, 4242, 0, 0xdead_beef] {
            rust.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(mutex_owner(&rust, false), None);
        // Released meanwhile.
        let mut free = m.clone();
        free[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(mutex_owner(&free, false), None);
        // PI futex: the word holds the owner (with FUTEX_WAITERS set).
        assert_eq!(
            mutex_owner(&(0x8000_0000u32 | 77).to_le_bytes(), true),
            Some(77)
        );
        assert_eq!(mutex_owner(&[1, 2], false), None);

        let mut f = Fake::default();
        f.memory.push((0x3000, m));
        let mut c = Collector::new(f);
        let info = c.lock(10, 0x3000, 128, &[10, 4242]);
        assert_eq!(info.owner_tid, Some(4242));
        // Not a thread of this process: no owner claimed.
        assert_eq!(c.lock(10, 0x3000, 128, &[10]).owner_tid, None);
        // The waiter itself (a relock): no owner claimed.
        assert_eq!(c.lock(4242, 0x3000, 128, &[4242]).owner_tid, None);
    }

    #[test]
    fn samples_read_cgroup_v1_throttling() {
        let mut f = Fake {
            now: 5_000,
            ..Fake::default()
        };
        f.proc
            .insert("task/9/schedstat".into(), b"1000 2000 3\n".to_vec());
        f.proc.insert(
            "task/9/stat".into(),
            b"9 (x) R 1 9 9 0 -1 0 10 0 4 0 1 1 0 0 20 0 1 0 5 0 0".to_vec(),
        );
        f.proc.insert(
            "task/9/cgroup".into(),
            b"1:cpu,cpuacct:/grp/leaf\n0::/\n".to_vec(),
        );
        f.files.insert(
            "/proc/self/mountinfo".into(),
            b"25 30 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n".to_vec(),
        );
        let leaf = "/sys/fs/cgroup/cpu/grp/leaf";
        f.files.insert(
            format!("{leaf}/cpu.stat"),
            b"nr_periods 10\nnr_throttled 9\nthrottled_time 810000000\n".to_vec(),
        );
        f.files
            .insert(format!("{leaf}/cpu.cfs_quota_us"), b"10000\n".to_vec());
        f.files
            .insert(format!("{leaf}/cpu.cfs_period_us"), b"100000\n".to_vec());
        f.files.insert(
            "/sys/fs/cgroup/cpu/grp/cpu.stat".into(),
            b"nr_periods 0\nnr_throttled 0\nthrottled_time 0\n".to_vec(),
        );
        let mut c = Collector::new(f);
        let s = c.sample(9);
        assert_eq!(s.at_ns, 5_000);
        assert_eq!(s.sched.unwrap().wait_ns, 2000);
        assert_eq!(s.faults.unwrap().majflt, 4);
        assert_eq!(s.cgroups.len(), 2);
        assert_eq!(s.cgroups[0].dir, leaf);
        assert_eq!(s.cgroups[0].stat.nr_throttled, 9);
        assert_eq!(s.cgroups[0].quota.unwrap().quota_us, 10_000);
        assert_eq!(s.cgroups[1].dir, "/sys/fs/cgroup/cpu/grp");
        assert!(s.cgroups[1].quota.is_none());
    }

    /// A static of this test binary, as a `static pthread_mutex_t` would be.
    #[used]
    static JOURNAL_LOCK: [u64; 5] = [0; 5];

    #[test]
    fn a_static_names_its_futex_word() {
        let pid = std::process::id() as i32;
        let mut maps = crate::proc::read_maps(pid).expect("own maps");
        maps.sort_by_key(|m| m.start);
        let modules = crate::module::capture(pid, &maps, &mut crate::module::ModuleCache::new());
        let mut c = Collector::with_modules(Live { pid }, modules);
        let addr = JOURNAL_LOCK.as_ptr() as u64;
        let name = c.data_symbol(addr).expect("a data symbol");
        assert!(name.ends_with("JOURNAL_LOCK"), "{name}");
        let inside = c.data_symbol(addr + 8).expect("inside the symbol");
        assert!(inside.ends_with("JOURNAL_LOCK+0x8"), "{inside}");
        // The heap is in no module.
        let heap = Box::new(0u64);
        assert_eq!(c.data_symbol(&*heap as *const u64 as u64), None);
    }

    #[test]
    fn children_by_namespace_pid() {
        let status = b"Name:\tsh\nNSpid:\t4000\t12\n";
        assert_eq!(ns_pid(status), Some(12));
        assert_eq!(ns_pid(b"Name:\tx\n"), None);
        let mut f = Fake::default();
        f.proc
            .insert("task/100/children".into(), b"4000 4001 ".to_vec());
        f.proc.insert("task/101/children".into(), b"".to_vec());
        f.files.insert("/proc/4000/status".into(), status.to_vec());
        f.files.insert("/proc/4000/comm".into(), b"sh\n".to_vec());
        f.files
            .insert("/proc/4001/status".into(), b"NSpid:\t4001\t13\n".to_vec());
        f.files
            .insert("/proc/4001/comm".into(), b"worker\n".to_vec());
        let mut c = Collector::new(f);
        let facts = c.facts(100, Some(&call("wait4", [13, 0, 0, 0, 0, 0])), &[100]);
        assert_eq!(
            facts.child,
            Some(Child {
                pid: 13,
                name: Some("worker".into())
            })
        );
        let any = c.facts(100, Some(&call("wait4", [u64::MAX, 0, 0, 0, 0, 0])), &[100]);
        assert_eq!(any.child.unwrap().name.as_deref(), Some("sh"));
    }

    #[test]
    fn a_socket_table_is_read_past_the_kernels_one_page_reads() {
        // 60 listening sockets: ~9 KiB of /proc/self/net/tcp, more than one
        // seq_file read returns. Every one of their ports must be in the copy.
        let listeners: Vec<std::net::TcpListener> = (0..60)
            .filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok())
            .collect();
        assert_eq!(listeners.len(), 60);
        let table = read_seq_file("/proc/self/net/tcp").expect("read /proc/self/net/tcp");
        let text = String::from_utf8_lossy(&table);
        assert!(table.len() > 4096, "{} bytes", table.len());
        for l in &listeners {
            let port = l.local_addr().unwrap().port();
            let local = format!("0100007F:{port:04X} ");
            assert!(
                text.contains(&local),
                "port {port} missing in {} bytes",
                table.len()
            );
        }
    }
}
