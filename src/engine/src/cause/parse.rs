//! Pure parsers of the `/proc` and cgroup files a cause needs: socket tables
//! (`/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`), fd link targets, `schedstat`,
//! `/proc/PID/cgroup`, `mountinfo`, `cpu.stat`, the CFS quota files and
//! `/proc/PID/task/TID/syscall`. Every input is untrusted: malformed lines are
//! skipped, numbers that do not parse are `None`, nothing is allocated from a
//! count read out of the input.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most socket-table lines kept from one file (a host with more sockets than
/// this in one namespace gets the first ones resolved).
pub const MAX_SOCKETS: usize = 1 << 18;

fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
}

fn dec<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn hex_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

// ---------------------------------------------------------------------------
// sockets

/// Transport of an internet socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One line of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    /// TCP or UDP.
    pub proto: Proto,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (`0.0.0.0:0` when not connected).
    pub remote: SocketAddr,
    /// The kernel's state number (`st`, hex in the file).
    pub state: u8,
    /// Bytes queued to send.
    pub tx_queue: u32,
    /// Bytes received, not yet read.
    pub rx_queue: u32,
    /// The socket's inode (what `/proc/PID/fd/N` links to: `socket:[inode]`).
    pub inode: u64,
}

impl InetSocket {
    /// The TCP state's name (`ESTABLISHED`, `SYN_SENT`, `LISTEN`, …); UDP
    /// sockets read `ESTABLISHED` when connected, `CLOSE` otherwise.
    pub fn state_name(&self) -> &'static str {
        tcp_state_name(self.state)
    }
}

/// The name of a TCP state number of `include/net/tcp_states.h`.
pub fn tcp_state_name(st: u8) -> &'static str {
    match st {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// `0100007F:1F90` (IPv4: the address as a host-order hex u32) or
/// `00000000000000000000000001000000:0050` (IPv6: four host-order u32s).
fn inet_addr(s: &[u8]) -> Option<SocketAddr> {
    let colon = s.iter().position(|&b| b == b':')?;
    let (addr, port) = (s.get(..colon)?, s.get(colon + 1..)?);
    let port = u16::try_from(hex_u32(port)?).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(hex_u32(addr)?.to_le_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in addr.chunks(8).enumerate() {
                let word = hex_u32(chunk)?.to_le_bytes();
                bytes.get_mut(i * 4..i * 4 + 4)?.copy_from_slice(&word);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses `/proc/net/tcp`, `tcp6`, `udp` or `udp6` (the header line and
/// malformed lines are skipped).
pub fn parse_inet_table(data: &[u8], proto: Proto) -> Vec<InetSocket> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n').skip(1) {
        if out.len() >= MAX_SOCKETS {
            break;
        }
        let mut f = fields(line);
        let _sl = f.next();
        let (Some(local), Some(remote), Some(st), Some(queues)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        // tr:tm->when, retrnsmt, uid, timeout, then the inode.
        let Some(inode) = f.nth(4).and_then(dec::<u64>) else {
            continue;
        };
        let (Some(local), Some(remote)) = (inet_addr(local), inet_addr(remote)) else {
            continue;
        };
        let Some(state) = hex_u32(st).and_then(|s| u8::try_from(s).ok()) else {
            continue;
        };
        let mut q = queues.split(|&b| b == b':');
        let tx_queue = q.next().and_then(hex_u32).unwrap_or(0);
        let rx_queue = q.next().and_then(hex_u32).unwrap_or(0);
        out.push(InetSocket {
            proto,
            local,
            remote,
            state,
            tx_queue,
            rx_queue,
            inode,
        });
    }
    out
}

/// One line of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// The inode.
    pub inode: u64,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5).
    pub sock_type: u16,
    /// `SS_*` state: 1 unconnected, 2 connecting, 3 connected, 4 disconnecting.
    pub state: u8,
    /// The bound path (`@name` for the abstract namespace), if any.
    pub path: Option<String>,
}

/// Parses `/proc/net/unix` (`Num RefCount Protocol Flags Type St Inode Path`).
pub fn parse_unix_table(data: &[u8]) -> Vec<UnixSocket> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n').skip(1) {
        if out.len() >= MAX_SOCKETS {
            break;
        }
        let mut f = fields(line).skip(4);
        let (Some(ty), Some(st), Some(inode)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Some(sock_type), Some(state), Some(inode)) = (
            hex_u32(ty).and_then(|v| u16::try_from(v).ok()),
            hex_u32(st).and_then(|v| u8::try_from(v).ok()),
            dec::<u64>(inode),
        ) else {
            continue;
        };
        // The path is the rest of the line (it may hold spaces).
        let path = rest_after_fields(line, 7)
            .and_then(|start| line.get(start..))
            .map(|p| String::from_utf8_lossy(p.trim_ascii()).into_owned())
            .filter(|p| !p.is_empty());
        out.push(UnixSocket {
            inode,
            sock_type,
            state,
            path,
        });
    }
    out
}

/// Byte offset of the `n`-th whitespace-separated field (0-based) of `line`.
fn rest_after_fields(line: &[u8], n: usize) -> Option<usize> {
    let mut i = 0usize;
    for _ in 0..n {
        while line.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        while line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
            i += 1;
        }
    }
    while line.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    (i < line.len()).then_some(i)
}

/// A socket found by inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    /// TCP or UDP.
    Inet(InetSocket),
    /// A Unix domain socket.
    Unix(UnixSocket),
}

/// The socket tables of one network namespace, by inode.
#[derive(Debug, Clone, Default)]
pub struct SocketTables {
    by_inode: HashMap<u64, Socket>,
}

impl SocketTables {
    /// Adds every socket of a parsed table (the first entry of an inode wins).
    pub fn add_inet(&mut self, sockets: Vec<InetSocket>) {
        for s in sockets {
            if self.by_inode.len() >= MAX_SOCKETS {
                break;
            }
            self.by_inode.entry(s.inode).or_insert(Socket::Inet(s));
        }
    }

    /// Adds every socket of `/proc/net/unix`.
    pub fn add_unix(&mut self, sockets: Vec<UnixSocket>) {
        for s in sockets {
            if self.by_inode.len() >= MAX_SOCKETS {
                break;
            }
            self.by_inode.entry(s.inode).or_insert(Socket::Unix(s));
        }
    }

    /// The socket with this inode.
    pub fn get(&self, inode: u64) -> Option<&Socket> {
        self.by_inode.get(&inode)
    }
}

// ---------------------------------------------------------------------------
// fd links

/// What `readlink /proc/PID/fd/N` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdLink {
    /// `socket:[inode]`.
    Socket(u64),
    /// `pipe:[inode]`.
    Pipe(u64),
    /// `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`, `anon_inode:inotify`, …
    Anon(String),
    /// A path (a deleted file keeps the kernel's ` (deleted)` suffix).
    Path(String),
}

/// Parses an fd link target.
pub fn parse_fd_link(target: &[u8]) -> FdLink {
    let bracketed = |prefix: &[u8]| -> Option<u64> {
        let inner = target.strip_prefix(prefix)?.strip_suffix(b"]")?;
        dec(inner)
    };
    if let Some(i) = bracketed(b"socket:[") {
        return FdLink::Socket(i);
    }
    if let Some(i) = bracketed(b"pipe:[") {
        return FdLink::Pipe(i);
    }
    if let Some(rest) = target.strip_prefix(b"anon_inode:") {
        let name = rest.strip_prefix(b"[").unwrap_or(rest);
        let name = name.strip_suffix(b"]").unwrap_or(name);
        return FdLink::Anon(String::from_utf8_lossy(name).into_owned());
    }
    FdLink::Path(String::from_utf8_lossy(target).into_owned())
}

// ---------------------------------------------------------------------------
// scheduler statistics

/// `/proc/PID/task/TID/schedstat`: time on CPU, time runnable but waiting
/// for a CPU (run-queue delay), and timeslices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Nanoseconds on a CPU.
    pub run_ns: u64,
    /// Nanoseconds runnable but waiting on a run queue (includes time the
    /// thread's cgroup was throttled).
    pub wait_ns: u64,
    /// Timeslices run.
    pub slices: u64,
}

/// Parses `schedstat` (`run_ns wait_ns slices`).
pub fn parse_schedstat(data: &[u8]) -> Option<SchedStat> {
    let mut f = fields(data);
    Some(SchedStat {
        run_ns: dec(f.next()?)?,
        wait_ns: dec(f.next()?)?,
        slices: f.next().and_then(dec).unwrap_or(0),
    })
}

/// The fields of `/proc/PID/task/TID/stat` a cause needs that
/// [`crate::proc::Stat`] does not keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStat {
    /// State letter.
    pub state: char,
    /// Major page faults (field 12 of proc(5)).
    pub majflt: u64,
    /// Minor page faults (field 10).
    pub minflt: u64,
}

/// Parses the state and the fault counters out of a `stat` line (the comm
/// lies between the first `(` and the last `)`).
pub fn parse_fault_stat(data: &[u8]) -> Option<FaultStat> {
    let close = data.iter().rposition(|&b| b == b')')?;
    let mut f = fields(data.get(close + 1..)?);
    let state = match f.next()? {
        [c] if c.is_ascii_graphic() => char::from(*c),
        _ => return None,
    };
    // ppid pgrp session tty_nr tpgid flags, then minflt cminflt majflt.
    let mut f = f.skip(6);
    let minflt = dec(f.next()?)?;
    let _cminflt = f.next()?;
    let majflt = dec(f.next()?)?;
    Some(FaultStat {
        state,
        majflt,
        minflt,
    })
}

// ---------------------------------------------------------------------------
// cgroups

/// Which cgroup hierarchy holds the CPU controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1 (a `cpu` hierarchy; `cpu.stat` has `throttled_time` in ns).
    V1,
    /// cgroup v2 (unified; `cpu.stat` has `throttled_usec`).
    V2,
}

/// The CPU cgroup of a process as `/proc/PID/cgroup` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// The hierarchy.
    pub version: CgroupVersion,
    /// The path inside the hierarchy (`/` is its root).
    pub path: String,
}

/// The CPU controller's cgroup from `/proc/PID/cgroup`: the v1 line whose
/// controllers include `cpu`, else the v2 line (`0::/path`).
pub fn parse_proc_cgroup(data: &[u8]) -> Option<CgroupLine> {
    let mut v2 = None;
    for line in data.split(|&b| b == b'\n') {
        let mut parts = line.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = String::from_utf8_lossy(path).into_owned();
        if id == b"0" && controllers.is_empty() {
            v2 = Some(CgroupLine {
                version: CgroupVersion::V2,
                path,
            });
        } else if controllers.split(|&b| b == b',').any(|c| c == b"cpu") {
            return Some(CgroupLine {
                version: CgroupVersion::V1,
                path,
            });
        }
    }
    v2
}

/// A cgroup file system mount from `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The hierarchy.
    pub version: CgroupVersion,
    /// The cgroup path mounted there (usually `/`).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            if let Some(oct) = s.get(i + 1..i + 4) {
                if let Some(v) = std::str::from_utf8(oct)
                    .ok()
                    .and_then(|o| u8::from_str_radix(o, 8).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of the CPU controller's hierarchies in a `mountinfo`: v1
/// `cgroup` mounts whose super options include `cpu`, and `cgroup2` mounts.
pub fn parse_cgroup_mounts(data: &[u8]) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = fields(line).take(64).collect();
        let Some(dash) = f.iter().position(|x| *x == b"-") else {
            continue;
        };
        let (Some(root), Some(mp), Some(fstype), Some(opts)) =
            (f.get(3), f.get(4), f.get(dash + 1), f.get(dash + 3))
        else {
            continue;
        };
        let version = match *fstype {
            b"cgroup2" => CgroupVersion::V2,
            b"cgroup" if opts.split(|&b| b == b',').any(|o| o == b"cpu") => CgroupVersion::V1,
            _ => continue,
        };
        out.push(CgroupMount {
            version,
            root: unescape(root),
            mount_point: unescape(mp),
        });
    }
    out
}

/// The directory of cgroup `line` under one of `mounts` (`None` if its
/// hierarchy is not mounted here, or the path escapes the mount).
pub fn cgroup_dir(line: &CgroupLine, mounts: &[CgroupMount]) -> Option<String> {
    for m in mounts.iter().filter(|m| m.version == line.version) {
        let root = m.root.trim_end_matches('/');
        let Some(rel) = line.path.strip_prefix(root) else {
            continue;
        };
        if !(rel.is_empty() || rel.starts_with('/')) || rel.split('/').any(|c| c == "..") {
            continue;
        }
        return Some(format!("{}{}", m.mount_point.trim_end_matches('/'), rel));
    }
    None
}

/// The throttling counters of a cgroup's `cpu.stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Enforcement periods that elapsed.
    pub nr_periods: u64,
    /// Periods in which the group was throttled.
    pub nr_throttled: u64,
    /// Total time throttled, ns (v1 `throttled_time`, v2 `throttled_usec` × 1000).
    pub throttled_ns: u64,
}

/// Parses `cpu.stat` of either version.
pub fn parse_cpu_stat(data: &[u8]) -> CpuStat {
    let mut st = CpuStat::default();
    for line in data.split(|&b| b == b'\n') {
        let mut f = fields(line);
        let (Some(key), Some(v)) = (f.next(), f.next().and_then(dec::<u64>)) else {
            continue;
        };
        match key {
            b"nr_periods" => st.nr_periods = v,
            b"nr_throttled" => st.nr_throttled = v,
            b"throttled_time" => st.throttled_ns = v,
            b"throttled_usec" => st.throttled_ns = v.saturating_mul(1000),
            _ => {}
        }
    }
    st
}

/// A CFS bandwidth limit: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// CPU time allowed per period, µs.
    pub quota_us: u64,
    /// The period, µs.
    pub period_us: u64,
}

/// The limit of v2's `cpu.max` (`max 100000` is none).
pub fn parse_cpu_max(data: &[u8]) -> Option<Quota> {
    let mut f = fields(data);
    let quota = f.next()?;
    let period_us = dec(f.next()?)?;
    let quota_us = dec(quota)?;
    Some(Quota {
        quota_us,
        period_us,
    })
}

/// The limit of v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us` (a quota of
/// -1 is none).
pub fn parse_cfs_quota(quota: &[u8], period: &[u8]) -> Option<Quota> {
    let q: i64 = dec(quota.trim_ascii())?;
    let period_us = dec(period.trim_ascii())?;
    (q > 0).then_some(Quota {
        quota_us: q as u64,
        period_us,
    })
}

// ---------------------------------------------------------------------------
// /proc/PID/task/TID/syscall

/// What `/proc/PID/task/TID/syscall` says (readable without stopping the
/// thread; the kernel fills it only while the thread is blocked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcSyscall {
    /// `running`: on a CPU.
    Running,
    /// Blocked, but not in a system call (`-1 sp pc`).
    NotInSyscall,
    /// Blocked in system call `nr` with these six arguments.
    In {
        /// The number.
        nr: u64,
        /// The arguments.
        args: [u64; 6],
    },
}

/// Parses `/proc/PID/task/TID/syscall` (`nr a0 … a5 sp pc`, hex arguments).
pub fn parse_proc_syscall(data: &[u8]) -> Option<ProcSyscall> {
    let mut f = fields(data);
    let first = f.next()?;
    if first == b"running" {
        return Some(ProcSyscall::Running);
    }
    if first.starts_with(b"-") {
        return Some(ProcSyscall::NotInSyscall);
    }
    let nr = dec(first)?;
    let mut args = [0u64; 6];
    for a in &mut args {
        let s = f.next()?;
        let s = s.strip_prefix(b"0x").unwrap_or(s);
        *a = u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()?;
    }
    Some(ProcSyscall::In { nr, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &[u8] = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 28412 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C56 0100007F:1538 01 00000000:00000005 00:00000000 00000000  1000        0 31337 1 0000000000000000 20 4 30 10 -1
   2: garbage line
";

    #[test]
    fn tcp_table() {
        let t = parse_inet_table(TCP, Proto::Tcp);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].local, "127.0.0.1:5432".parse().unwrap());
        assert_eq!(t[0].state_name(), "LISTEN");
        assert_eq!(t[0].inode, 28412);
        assert_eq!(t[1].local, "127.0.0.1:40022".parse().unwrap());
        assert_eq!(t[1].remote, "127.0.0.1:5432".parse().unwrap());
        assert_eq!(t[1].state_name(), "ESTABLISHED");
        assert_eq!(t[1].rx_queue, 5);
        assert_eq!(t[1].inode, 31337);
    }

    #[test]
    fn tcp6_table_and_mapped_addresses() {
        let data = b"  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:B5A2 0000000000000000FFFF00000302010A:01BB 02 00000001:00000000 01:00000064 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
";
        let t = parse_inet_table(data, Proto::Tcp);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(t[1].remote, "[::ffff:10.1.2.3]:443".parse().unwrap());
        assert_eq!(t[1].state_name(), "SYN_SENT");
    }

    #[test]
    fn unix_table() {
        let data = b"Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20811 /run/my socket.sock
0000000000000000: 00000003 00000000 00000000 0001 03 20999
0000000000000000: 00000002 00000000 00000000 0002 01 21000 @abstract
";
        let t = parse_unix_table(data);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].path.as_deref(), Some("/run/my socket.sock"));
        assert_eq!(t[0].inode, 20811);
        assert_eq!(t[1].path, None);
        assert_eq!(t[1].state, 3);
        assert_eq!(t[2].sock_type, 2);
        assert_eq!(t[2].path.as_deref(), Some("@abstract"));
        let mut tables = SocketTables::default();
        tables.add_unix(t);
        tables.add_inet(parse_inet_table(TCP, Proto::Tcp));
        assert!(matches!(tables.get(20999), Some(Socket::Unix(_))));
        assert!(matches!(tables.get(31337), Some(Socket::Inet(_))));
        assert!(tables.get(1).is_none());
    }

    #[test]
    fn fd_links() {
        let cases: [(&[u8], FdLink); 6] = [
            (b"socket:[31337]", FdLink::Socket(31337)),
            (b"pipe:[12]", FdLink::Pipe(12)),
            (b"anon_inode:[eventfd]", FdLink::Anon("eventfd".into())),
            (b"anon_inode:inotify", FdLink::Anon("inotify".into())),
            (
                b"/var/lib/x (deleted)",
                FdLink::Path("/var/lib/x (deleted)".into()),
            ),
            (b"socket:[x]", FdLink::Path("socket:[x]".into())),
        ];
        for (link, want) in cases {
            assert_eq!(
                parse_fd_link(link),
                want,
                "{}",
                String::from_utf8_lossy(link)
            );
        }
    }

    #[test]
    fn schedstat_and_faults() {
        assert_eq!(
            parse_schedstat(b"355655262 179820 21\n"),
            Some(SchedStat {
                run_ns: 355_655_262,
                wait_ns: 179_820,
                slices: 21
            })
        );
        assert_eq!(parse_schedstat(b"x"), None);
        let stat =
            b"4242 (a) b) c) D 1 4242 4242 0 -1 4194560 100 7 312 9 5 3 0 0 20 0 1 0 123 0 0";
        assert_eq!(
            parse_fault_stat(stat),
            Some(FaultStat {
                state: 'D',
                majflt: 312,
                minflt: 100
            })
        );
        assert_eq!(parse_fault_stat(b"1 (x) R 1 2"), None);
    }

    #[test]
    fn cgroups() {
        let v1 = b"9:name=systemd:/\n2:cpuacct:/\n1:cpu,cpuacct:/aiodebug/t1\n0::/\n";
        let l = parse_proc_cgroup(v1).unwrap();
        assert_eq!(l.version, CgroupVersion::V1);
        assert_eq!(l.path, "/aiodebug/t1");
        let v2 = parse_proc_cgroup(b"0::/system.slice/app.service\n").unwrap();
        assert_eq!(v2.version, CgroupVersion::V2);
        assert_eq!(v2.path, "/system.slice/app.service");
        assert_eq!(parse_proc_cgroup(b"4:memory:/x\n"), None);

        let mi = b"25 30 0:22 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu\n\
26 30 0:23 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
27 30 0:24 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
28 30 0:25 /docker/abc /mnt/my\\040cg rw - cgroup cgroup rw,cpu,cpuacct\n\
29 30 8:1 / / rw - ext4 /dev/sda1 rw\n";
        let mounts = parse_cgroup_mounts(mi);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[2].mount_point, "/mnt/my cg");
        assert_eq!(mounts[2].root, "/docker/abc");
        assert_eq!(
            cgroup_dir(&l, &mounts[..1]).as_deref(),
            Some("/sys/fs/cgroup/cpu/aiodebug/t1")
        );
        assert_eq!(
            cgroup_dir(&v2, &mounts).as_deref(),
            Some("/sys/fs/cgroup/unified/system.slice/app.service")
        );
        let inside = CgroupLine {
            version: CgroupVersion::V1,
            path: "/docker/abc/inner".into(),
        };
        assert_eq!(
            cgroup_dir(&inside, &mounts[2..]).as_deref(),
            Some("/mnt/my cg/inner")
        );
        let escape = CgroupLine {
            version: CgroupVersion::V1,
            path: "/../etc".into(),
        };
        assert_eq!(cgroup_dir(&escape, &mounts[..1]), None);
    }

    #[test]
    fn cpu_stat_both_versions() {
        let v1 = parse_cpu_stat(
            b"nr_periods 30\nnr_throttled 9\nthrottled_time 810000000\nnr_bursts 0\n",
        );
        assert_eq!(
            v1,
            CpuStat {
                nr_periods: 30,
                nr_throttled: 9,
                throttled_ns: 810_000_000
            }
        );
        let v2 = parse_cpu_stat(
            b"usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 12\nnr_throttled 4\nthrottled_usec 3500\n",
        );
        assert_eq!(v2.nr_throttled, 4);
        assert_eq!(v2.throttled_ns, 3_500_000);
        assert_eq!(
            parse_cpu_max(b"10000 100000\n"),
            Some(Quota {
                quota_us: 10_000,
                period_us: 100_000
            })
        );
        assert_eq!(parse_cpu_max(b"max 100000\n"), None);
        assert_eq!(
            parse_cfs_quota(b"10000\n", b"100000\n"),
            Some(Quota {
                quota_us: 10_000,
                period_us: 100_000
            })
        );
        assert_eq!(parse_cfs_quota(b"-1\n", b"100000\n"), None);
    }

    #[test]
    fn proc_syscall() {
        assert_eq!(parse_proc_syscall(b"running\n"), Some(ProcSyscall::Running));
        assert_eq!(
            parse_proc_syscall(b"-1 0x7ffd5967d788 0x7face15b02ad\n"),
            Some(ProcSyscall::NotInSyscall)
        );
        assert_eq!(
            parse_proc_syscall(
                b"58 0x0 0x3 0x7face1434000 0x20000 0x7face14c7b60 0xffffffff 0x7ffd5967d788 0x7face15b02ad\n"
            ),
            Some(ProcSyscall::In {
                nr: 58,
                args: [0, 3, 0x7face1434000, 0x20000, 0x7face14c7b60, 0xffff_ffff]
            })
        );
        assert_eq!(parse_proc_syscall(b"0 0x1\n"), None);
    }
}
