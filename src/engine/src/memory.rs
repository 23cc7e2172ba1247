//! Reading the target's memory: the engine's one trait for it,
//! [`ReadMemory`] (as remoteprocess and framehop have one), with a process
//! over `process_vm_readv(2)` ([`ProcessMemory`]) and byte regions
//! ([`SliceMemory`]: tests, recorded states); the heartbeat reader
//! ([`crate::target`]), the Python readers and the unwinder's stack reads
//! ([`crate::snapshot::ThreadSnapshot`]) all read through it.
//!
//! `process_vm_readv` needs the same permission as `PTRACE_ATTACH` (same user
//! and dumpable, or `CAP_SYS_PTRACE`) but does not stop the target, and works
//! on a process another tracer holds.

use std::io::IoSliceMut;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::proc;

/// Largest single read, in bytes (64 MiB): [`read`] refuses bigger lengths so
/// a size read out of the target cannot make us allocate without bound.
pub const MAX_READ: usize = 64 << 20;

/// Reads exactly `len` bytes at `addr` of process `pid`.
///
/// Fails if `len` exceeds [`MAX_READ`], or if fewer than `len` bytes are
/// readable (see [`read_exact_into`]).
pub fn read(pid: i32, addr: u64, len: usize) -> Result<Vec<u8>> {
    if len > MAX_READ {
        return Err(Error::io(
            format!("reading {len} bytes at 0x{addr:x} in process {pid}"),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("more than the {MAX_READ}-byte limit of one read"),
            ),
        ));
    }
    let mut buf = vec![0u8; len];
    read_exact_into(pid, addr, &mut buf)?;
    Ok(buf)
}

/// Reads up to `buf.len()` bytes at `addr` of process `pid` into `buf` and
/// returns how many were read. A read that runs off the end of the readable
/// memory stops there and returns the bytes before it; only a read whose
/// first byte is unreadable is an error.
pub fn read_into(pid: i32, addr: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let Some(rest) = buf.get_mut(done..) else {
            break;
        };
        let at = addr
            .checked_add(done as u64)
            .and_then(|a| usize::try_from(a).ok());
        let Some(at) = at else {
            if done > 0 {
                break;
            }
            return Err(unreadable(pid, addr, Errno::EFAULT));
        };
        // The kernel rejects ranges that wrap around the address space.
        let len = rest.len().min(usize::MAX - at);
        if len == 0 {
            break;
        }
        let remote = [RemoteIoVec { base: at, len }];
        let Some(rest) = rest.get_mut(..len) else {
            break;
        };
        let mut local = [IoSliceMut::new(rest)];
        match process_vm_readv(Pid::from_raw(pid), &mut local, &remote) {
            Ok(0) => break,
            Ok(n) => done = done.saturating_add(n),
            // A fault after some bytes: the readable part ends here.
            Err(Errno::EFAULT) if done > 0 => break,
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(map_errno(pid, addr.wrapping_add(done as u64), errno));
            }
        }
    }
    Ok(done)
}

/// Reads the blocks of `size` bytes at `addrs` of process `pid` into
/// consecutive slices of `out`, in one `process_vm_readv` (at most 1024
/// blocks, `IOV_MAX`); returns how many blocks were read whole (the kernel
/// stops at the first unreadable one).
pub fn read_pages(pid: i32, addrs: &[u64], size: usize, out: &mut [u8]) -> usize {
    let remote: Vec<RemoteIoVec> = addrs
        .iter()
        .take(1024)
        .zip(out.chunks_exact(size))
        .map_while(|(&a, _)| {
            Some(RemoteIoVec {
                base: usize::try_from(a).ok()?,
                len: size,
            })
        })
        .collect();
    let Some(dst) = out.get_mut(..remote.len() * size) else {
        return 0;
    };
    let mut local = [IoSliceMut::new(dst)];
    match process_vm_readv(Pid::from_raw(pid), &mut local, &remote) {
        Ok(n) => n / size.max(1),
        Err(_) => 0,
    }
}

/// Reads exactly `buf.len()` bytes at `addr` of process `pid`; a short read
/// is an [`Error::Io`].
pub fn read_exact_into(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let n = read_into(pid, addr, buf)?;
    if n < buf.len() {
        let end = addr.wrapping_add(n as u64);
        return Err(Error::io(
            format!(
                "address 0x{end:x} not readable in process {pid} (read {n} of {} bytes at 0x{addr:x})",
                buf.len()
            ),
            std::io::Error::from(Errno::EFAULT),
        ));
    }
    Ok(())
}

/// Most iovecs one `process_vm_readv` takes (`IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// Reads the byte ranges `(offset, len)` of the memory at `base` of process
/// `pid` into the same offsets of `buf`, with one `process_vm_readv` per
/// [`IOV_MAX`] ranges; bytes of `buf` outside the ranges are left as they
/// are. The ranges must be sorted, disjoint and inside `buf`; a short read
/// is an [`Error::Io`] (the caller reads everything instead).
pub fn read_ranges(pid: i32, base: u64, ranges: &[(usize, usize)], buf: &mut [u8]) -> Result<()> {
    for chunk in ranges.chunks(IOV_MAX) {
        let mut remote = Vec::with_capacity(chunk.len());
        let mut local = Vec::with_capacity(chunk.len());
        scatter(pid, base, chunk, buf, &mut remote, &mut local)?;
        read_scattered(pid, base, &mut local, &remote)?;
    }
    Ok(())
}

/// Like [`read_ranges`] into `first`, then into `second`, in one
/// `process_vm_readv` when the ranges fit twice in [`IOV_MAX`] iovecs. The
/// kernel copies iovecs in order, so every byte of `second` is read after
/// the same byte of `first`: the two copies a torn-read check compares,
/// for one system call instead of two.
pub fn read_ranges_twice(
    pid: i32,
    base: u64,
    ranges: &[(usize, usize)],
    first: &mut [u8],
    second: &mut [u8],
) -> Result<()> {
    if ranges.len().saturating_mul(2) > IOV_MAX {
        read_ranges(pid, base, ranges, first)?;
        return read_ranges(pid, base, ranges, second);
    }
    let mut remote = Vec::with_capacity(ranges.len() * 2);
    let mut local = Vec::with_capacity(ranges.len() * 2);
    scatter(pid, base, ranges, first, &mut remote, &mut local)?;
    scatter(pid, base, ranges, second, &mut remote, &mut local)?;
    read_scattered(pid, base, &mut local, &remote)
}

/// Appends to `remote` and `local` the iovecs of `ranges` (sorted, disjoint,
/// inside `buf`) of the memory at `base` and of `buf`.
fn scatter<'b>(
    pid: i32,
    base: u64,
    ranges: &[(usize, usize)],
    buf: &'b mut [u8],
    remote: &mut Vec<RemoteIoVec>,
    local: &mut Vec<IoSliceMut<'b>>,
) -> Result<()> {
    let bad = |what: &str| {
        Error::io(
            format!("reading scattered ranges of process {pid}"),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string()),
        )
    };
    let (first, _) = ranges.first().copied().unwrap_or((0, 0));
    let mut rest = buf
        .get_mut(first..)
        .ok_or_else(|| bad("range outside the buffer"))?;
    let mut at = first;
    for &(off, len) in ranges {
        let skip = off.checked_sub(at).ok_or_else(|| bad("ranges overlap"))?;
        if skip > rest.len() || len > rest.len() - skip {
            return Err(bad("range outside the buffer"));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let (this, tail) = tail.split_at_mut(len);
        rest = tail;
        at = off + len;
        let addr = base
            .checked_add(off as u64)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or_else(|| bad("address overflows"))?;
        remote.push(RemoteIoVec { base: addr, len });
        local.push(IoSliceMut::new(this));
    }
    Ok(())
}

/// One `process_vm_readv` of `remote` into `local`; a short read is an
/// [`Error::Io`].
fn read_scattered(
    pid: i32,
    base: u64,
    local: &mut [IoSliceMut<'_>],
    remote: &[RemoteIoVec],
) -> Result<()> {
    let want: usize = remote.iter().map(|r| r.len).sum();
    let got = loop {
        match process_vm_readv(Pid::from_raw(pid), local, remote) {
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(map_errno(pid, base, errno)),
            Ok(n) => break n,
        }
    };
    if got != want {
        return Err(Error::io(
            format!("short scattered read of process {pid} ({got} of {want} bytes)"),
            std::io::Error::from(Errno::EFAULT),
        ));
    }
    Ok(())
}

fn unreadable(pid: i32, addr: u64, errno: Errno) -> Error {
    Error::io(
        format!("address 0x{addr:x} not readable in process {pid}"),
        std::io::Error::from(errno),
    )
}

/// Maps a `process_vm_readv` failure to the engine's [`Error`].
fn map_errno(pid: i32, addr: u64, errno: Errno) -> Error {
    match errno {
        Errno::ESRCH => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                Error::NoSuchProcess { pid }
            } else if proc::read_stat(pid).is_ok_and(|s| s.is_kernel_thread()) {
                Error::io(
                    format!("process {pid} is a kernel thread; it has no user memory to read"),
                    std::io::Error::from(errno),
                )
            } else {
                // A zombie, or a process between releasing its memory and dying.
                Error::Exited { pid }
            }
        }
        Errno::EPERM | Errno::EACCES => Error::PermissionDenied {
            pid,
            hint: proc::permission_hint(pid),
        },
        Errno::EFAULT => unreadable(pid, addr, errno),
        other => Error::io(
            format!("reading memory at 0x{addr:x} of process {pid}"),
            std::io::Error::from(other),
        ),
    }
}

// ---------------------------------------------------------------------------
// the engine's one memory trait

/// Result of a [`ReadMemory::read`]: the error is a sentence for a note.
pub type ReadResult<T> = std::result::Result<T, String>;

/// Page size of [`ReadMemory::read_pages`] (the smallest x86_64 page).
pub const PAGE: u64 = 4096;

/// Reads the target's memory.
pub trait ReadMemory {
    /// Reads up to `buf.len()` bytes at `addr` into `buf`; returns how many
    /// were read (fewer when the readable memory ends). An unreadable first
    /// byte is an error.
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<usize>;

    /// Reads whole pages of [`PAGE`] bytes at the page addresses `pages`
    /// into consecutive slices of `out` (`pages.len() * PAGE` bytes), in
    /// order, stopping at the first unreadable one; returns how many were
    /// read. One vectored system call where the reader can.
    fn read_pages(&self, pages: &[u64], out: &mut [u8]) -> usize {
        let mut done = 0;
        for (page, dst) in pages.iter().zip(out.chunks_exact_mut(PAGE as usize)) {
            match self.read(*page, dst) {
                Ok(n) if n == dst.len() => done += 1,
                _ => break,
            }
        }
        done
    }

    /// Fills `buf` from `addr`: a short read is an error. The default says
    /// [`Error::Io`]; a process reader keeps the kernel's reason (a gone or
    /// forbidden process has its own exit code).
    fn read_exact_into(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let want = buf.len();
        match self.read(addr, buf) {
            Ok(n) if n == want => Ok(()),
            Ok(n) => Err(short(addr, n, want)),
            Err(e) => Err(Error::io(e, std::io::Error::from(Errno::EFAULT))),
        }
    }

    /// Reads the byte ranges `(offset, len)` of the memory at `base` into the
    /// same offsets of `buf` (sorted, disjoint, inside `buf`; the rest of
    /// `buf` is left as it is). One vectored system call where the reader can.
    fn read_ranges(&self, base: u64, ranges: &[(usize, usize)], buf: &mut [u8]) -> Result<()> {
        for &(off, len) in ranges {
            let end = off.checked_add(len);
            let dst = end.and_then(|end| buf.get_mut(off..end)).ok_or_else(|| {
                Error::io(
                    "reading scattered ranges",
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "range outside the buffer",
                    ),
                )
            })?;
            self.read_exact_into(base.wrapping_add(off as u64), dst)?;
        }
        Ok(())
    }

    /// Like [`ReadMemory::read_ranges`] into `first`, then into `second`:
    /// every byte of `second` is read after the same byte of `first` (the two
    /// copies a torn-read check compares). One system call where the reader
    /// can ([`read_ranges_twice`]).
    fn read_ranges_twice(
        &self,
        base: u64,
        ranges: &[(usize, usize)],
        first: &mut [u8],
        second: &mut [u8],
    ) -> Result<()> {
        self.read_ranges(base, ranges, first)?;
        self.read_ranges(base, ranges, second)
    }
}

fn short(addr: u64, got: usize, want: usize) -> Error {
    Error::io(
        format!("short read at 0x{addr:x} ({got} of {want} bytes)"),
        std::io::Error::from(Errno::EFAULT),
    )
}

/// The memory of a live process, through `process_vm_readv`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    /// The process.
    pub pid: i32,
}

impl ReadMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<usize> {
        read_into(self.pid, addr, buf).map_err(|e| e.to_string())
    }

    fn read_pages(&self, pages: &[u64], out: &mut [u8]) -> usize {
        read_pages(self.pid, pages, PAGE as usize, out)
    }

    fn read_exact_into(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        read_exact_into(self.pid, addr, buf)
    }

    fn read_ranges(&self, base: u64, ranges: &[(usize, usize)], buf: &mut [u8]) -> Result<()> {
        read_ranges(self.pid, base, ranges, buf)
    }

    fn read_ranges_twice(
        &self,
        base: u64,
        ranges: &[(usize, usize)],
        first: &mut [u8],
        second: &mut [u8],
    ) -> Result<()> {
        read_ranges_twice(self.pid, base, ranges, first, second)
    }
}

/// Memory made of byte regions at given addresses (tests, recorded states).
#[derive(Debug, Clone, Default)]
pub struct SliceMemory {
    regions: Vec<(u64, Vec<u8>)>,
}

impl SliceMemory {
    /// No memory at all.
    pub fn new() -> SliceMemory {
        SliceMemory::default()
    }

    /// Adds `bytes` at `addr` (later regions win where they overlap).
    pub fn add(&mut self, addr: u64, bytes: Vec<u8>) -> &mut SliceMemory {
        self.regions.push((addr, bytes));
        self
    }
}

impl ReadMemory for SliceMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<usize> {
        for (start, bytes) in self.regions.iter().rev() {
            let Some(off) = addr.checked_sub(*start) else {
                continue;
            };
            let Ok(off) = usize::try_from(off) else {
                continue;
            };
            let Some(src) = bytes.get(off..) else {
                continue;
            };
            if src.is_empty() {
                continue;
            }
            let n = src.len().min(buf.len());
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            return Ok(n);
        }
        Err(format!("address 0x{addr:x} is not readable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_memory_reads_exact_and_scattered() {
        let mut mem = SliceMemory::new();
        mem.add(0x1000, (0u8..64).collect());
        let mut buf = [0u8; 4];
        mem.read_exact_into(0x1010, &mut buf).expect("inside");
        assert_eq!(buf, [16, 17, 18, 19]);
        // Past the end: short, an error; before the start: unreadable.
        assert!(mem.read_exact_into(0x103e, &mut buf).is_err());
        assert!(mem.read_exact_into(0xfff, &mut buf).is_err());
        let mut out = [0xffu8; 16];
        mem.read_ranges(0x1000, &[(1, 2), (8, 3)], &mut out)
            .expect("ranges");
        assert_eq!(
            &out[..12],
            &[0xff, 1, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 8, 9, 10, 0xff]
        );
        assert!(
            mem.read_ranges(0x1000, &[(15, 2)], &mut out).is_err(),
            "outside the buffer"
        );
        assert!(mem.read_ranges(0x1000, &[(0, 2)], &mut out[..1]).is_err());
    }
    use crate::proc::MapPath;
    use std::process::{Command, Stdio};

    static KNOWN: [u8; 32] = *b"aiodebug memory test: 0123456789";

    fn me() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn scattered_ranges_land_at_their_offsets() {
        let src: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let base = src.as_ptr() as u64;
        let mut buf = vec![0xEEu8; 3000];
        let ranges = [(0, 16), (100, 1), (1000, 500), (2990, 10)];
        read_ranges(me(), base, &ranges, &mut buf).expect("read");
        for (i, (&got, &want)) in buf.iter().zip(&src).enumerate() {
            let inside = ranges.iter().any(|&(o, l)| (o..o + l).contains(&i));
            assert_eq!(got, if inside { want } else { 0xEE }, "byte {i}");
        }
        // More ranges than one call takes.
        let many: Vec<(usize, usize)> = (0..1500).map(|i| (i * 2, 1)).collect();
        let mut buf = vec![0u8; 3000];
        read_ranges(me(), base, &many, &mut buf).expect("read many");
        assert_eq!(buf[2998], src[2998]);
        assert_eq!(buf[2999], 0);
        // Overlapping, out of order or out of the buffer: refused, no panic.
        assert!(read_ranges(me(), base, &[(10, 10), (15, 1)], &mut buf).is_err());
        assert!(read_ranges(me(), base, &[(2995, 10)], &mut buf).is_err());
        assert!(read_ranges(me(), base, &[(4000, 1)], &mut buf).is_err());
        assert!(read_ranges(me(), 0, &[(0, 8)], &mut buf).is_err());
    }

    #[test]
    fn ranges_read_twice_land_in_both_copies() {
        let src: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let base = src.as_ptr() as u64;
        let ranges = [(0, 16), (100, 1), (1000, 500), (2990, 10)];
        let (mut a, mut b) = (vec![0xEEu8; 3000], vec![0xDDu8; 3000]);
        read_ranges_twice(me(), base, &ranges, &mut a, &mut b).expect("read");
        for i in 0..3000 {
            let inside = ranges.iter().any(|&(o, l)| (o..o + l).contains(&i));
            assert_eq!(a[i], if inside { src[i] } else { 0xEE }, "first, byte {i}");
            assert_eq!(b[i], if inside { src[i] } else { 0xDD }, "second, byte {i}");
        }
        // Too many for one call: two calls, same result.
        let many: Vec<(usize, usize)> = (0..600).map(|i| (i * 4, 2)).collect();
        let (mut a, mut b) = (vec![0u8; 3000], vec![0u8; 3000]);
        read_ranges_twice(me(), base, &many, &mut a, &mut b).expect("read many");
        assert_eq!((a[2396], b[2397], a[2398]), (src[2396], src[2397], 0));
        // A bad range in either copy: refused, no panic.
        let mut short = vec![0u8; 100];
        assert!(read_ranges_twice(me(), base, &[(90, 20)], &mut a, &mut short).is_err());
        assert!(read_ranges_twice(me(), 0, &[(0, 8)], &mut a, &mut b).is_err());
    }

    #[test]
    fn reads_own_static() {
        let addr = KNOWN.as_ptr() as u64;
        assert_eq!(read(me(), addr, KNOWN.len()).unwrap(), KNOWN);
        let mut buf = [0u8; 8];
        assert_eq!(read_into(me(), addr + 4, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"ebug mem");
        read_exact_into(me(), addr, &mut buf).unwrap();
        assert_eq!(&buf, b"aiodebug");
        assert_eq!(read(me(), addr, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn short_read_at_end_of_mapping() {
        // The last readable mapping of our own [stack] is followed by a gap.
        let maps = proc::read_maps(me()).unwrap();
        let stack = maps
            .iter()
            .find(|m| m.path == MapPath::Special("[stack]".into()))
            .unwrap();
        let next_start = maps
            .iter()
            .map(|m| m.start)
            .filter(|&s| s >= stack.end)
            .min();
        assert_ne!(
            next_start,
            Some(stack.end),
            "stack is followed by a mapping"
        );
        let mut buf = vec![0u8; 8192];
        let n = read_into(me(), stack.end - 100, &mut buf).unwrap();
        assert_eq!(n, 100);
        let e = read_exact_into(me(), stack.end - 100, &mut buf).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(read(me(), stack.end - 100, 8192).is_err());
    }

    #[test]
    fn reads_child_stack() {
        let mut child = Command::new("sleep")
            .arg("5")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Wait for the exec to finish: the exe becomes `sleep`.
        let mut stack = None;
        for _ in 0..500 {
            let exe = proc::read_exe(pid).unwrap_or_default();
            if exe.to_string_lossy().contains("sleep") {
                stack = proc::read_maps(pid)
                    .unwrap()
                    .into_iter()
                    .find(|m| m.path == MapPath::Special("[stack]".into()));
                if stack.is_some() {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let stack = stack.expect("child stack");
        let start = read(pid, stack.start, 16);
        // The top of the stack holds the environment and the program's path.
        let top = read(pid, stack.end - 4096, 4096);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(start.unwrap().len(), 16);
        let top = top.unwrap();
        assert!(top.windows(5).any(|w| w == b"sleep"));
    }

    #[test]
    fn errors() {
        let e = read(i32::MAX, 0x1000, 8).unwrap_err();
        assert!(
            matches!(e, Error::NoSuchProcess { pid } if pid == i32::MAX),
            "{e}"
        );
        let e = read(me(), 8, 8).unwrap_err();
        match &e {
            Error::Io { context, .. } => {
                assert!(context.contains("0x8 not readable"), "{context}")
            }
            other => panic!("{other}"),
        }
        let e = read(me(), u64::MAX - 3, 8).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let e = read(me(), 0x1000, MAX_READ + 1).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    #[test]
    fn kernel_thread_and_zombie() {
        // kthreadd is PID 2 in the initial PID namespace; skip if not visible.
        if proc::read_stat(2).is_ok_and(|s| s.is_kernel_thread()) {
            let e = read(2, 0x1000, 8).unwrap_err();
            assert!(e.to_string().contains("kernel thread"), "{e}");
        }
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        for _ in 0..500 {
            if proc::read_stat(pid).is_ok_and(|s| s.state == 'Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let e = read(pid, 0x1000, 8).unwrap_err();
        child.wait().unwrap();
        assert!(matches!(e, Error::Exited { .. }), "{e}");
    }
}
