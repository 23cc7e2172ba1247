//! A [`ProcessSnapshot`] as minidump bytes.

use std::fmt::Write as _;

use super::bytes::Out;
use super::{
    kind, Extra, AIODEBUG_STREAM, CONTEXT_FLAGS, CONTEXT_SIZE, CV_ELF, SIGNATURE, VERSION,
};
use crate::proc::{MapEntry, MapPath};
use crate::snapshot::{ProcessSnapshot, Registers};

/// Streams written, in order.
const STREAMS: usize = 9;

/// The minidump of `snap` (with the live unwinding and annotations of `extra`).
pub fn write(snap: &ProcessSnapshot, extra: &Extra<'_>) -> Vec<u8> {
    let mut o = Out::default();
    let taken = snap
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Header, then the directory, filled in as the streams are written.
    o.u32(SIGNATURE);
    o.u32(VERSION);
    o.u32(STREAMS as u32);
    o.u32(32);
    o.u32(0);
    o.u32(u32::try_from(taken).unwrap_or(u32::MAX));
    o.u64(0);
    let dir = o.pos();
    o.zeros(12 * STREAMS);
    let mut n = 0u32;
    let mut entry = |o: &mut Out, ty: u32, rva: u32| {
        let size = o.pos() - rva;
        let at = dir + 12 * n;
        o.patch_u32(at, ty);
        o.patch_u32(at + 4, size);
        o.patch_u32(at + 8, rva);
        n += 1;
    };

    // Memory first: thread stacks and the vDSO image; the thread and memory
    // lists point at these bytes (one copy for both, as Breakpad does).
    let mut memory: Vec<(u64, u32, u32)> = Vec::new();
    let mut stacks: Vec<(u64, u32, u32)> = Vec::with_capacity(snap.threads.len());
    for t in &snap.threads {
        if t.stack.is_empty() {
            stacks.push((0, 0, 0));
            continue;
        }
        o.align();
        let rva = o.pos();
        o.bytes(&t.stack);
        let d = (t.stack_start, t.stack.len() as u32, rva);
        stacks.push(d);
        memory.push(d);
    }
    for m in &snap.modules.modules {
        if let Some(img) = &m.image {
            o.align();
            let rva = o.pos();
            o.bytes(img);
            memory.push((m.start, img.len() as u32, rva));
        }
    }
    // Contexts.
    let mut contexts = Vec::with_capacity(snap.threads.len());
    for t in &snap.threads {
        o.align();
        contexts.push(o.pos());
        context(&mut o, &t.regs.unwrap_or_default());
    }
    // Strings: module names, thread names, the OS version.
    let module_names: Vec<u32> = snap
        .modules
        .modules
        .iter()
        .map(|m| o.string(&m.name))
        .collect();
    let thread_names: Vec<u32> = snap.threads.iter().map(|t| o.string(&t.name)).collect();
    let csd = o.string("Linux");
    // CodeView records.
    let mut cv = Vec::with_capacity(snap.modules.modules.len());
    for m in &snap.modules.modules {
        match &m.build_id {
            Some(b) => {
                o.align();
                let rva = o.pos();
                o.u32(CV_ELF);
                o.bytes(b);
                cv.push((o.pos() - rva, rva));
            }
            None => cv.push((0, 0)),
        }
    }

    // SystemInfo.
    o.align();
    let rva = o.pos();
    o.u16(super::ARCH_AMD64);
    o.u16(6); // processor level: family 6, as Breakpad writes for x86_64
    o.u16(0);
    o.u8(0); // number of processors: not captured
    o.u8(0);
    o.u32(0);
    o.u32(0);
    o.u32(0);
    o.u32(super::OS_LINUX);
    o.u32(csd);
    o.u16(0);
    o.u16(0);
    o.zeros(24);
    entry(&mut o, kind::SYSTEM_INFO, rva);

    // ThreadList.
    o.align();
    let rva = o.pos();
    o.u32(snap.threads.len() as u32);
    for (i, t) in snap.threads.iter().enumerate() {
        let (start, size, srva) = stacks.get(i).copied().unwrap_or_default();
        o.u32(t.tid as u32);
        o.u32(0); // suspend count
        o.u32(0); // priority class
        o.u32(0); // priority
        o.u64(t.regs.map_or(0, |r| r.fs_base)); // TEB: the TLS base on Linux
        o.u64(start);
        o.u32(size);
        o.u32(srva);
        o.u32(CONTEXT_SIZE as u32);
        o.u32(contexts.get(i).copied().unwrap_or(0));
    }
    entry(&mut o, kind::THREAD_LIST, rva);

    // MemoryList.
    o.align();
    let rva = o.pos();
    o.u32(memory.len() as u32);
    for (start, size, at) in &memory {
        o.u64(*start);
        o.u32(*size);
        o.u32(*at);
    }
    entry(&mut o, kind::MEMORY_LIST, rva);

    // ModuleList.
    o.align();
    let rva = o.pos();
    o.u32(snap.modules.modules.len() as u32);
    for (i, m) in snap.modules.modules.iter().enumerate() {
        o.u64(m.start);
        o.u32(u32::try_from(m.end.saturating_sub(m.start)).unwrap_or(u32::MAX));
        o.u32(0); // checksum
        o.u32(0); // time stamp
        o.u32(module_names.get(i).copied().unwrap_or(0));
        o.zeros(52); // VS_FIXEDFILEINFO
        let (cv_size, cv_rva) = cv.get(i).copied().unwrap_or_default();
        o.u32(cv_size);
        o.u32(cv_rva);
        o.u64(0); // misc record
        o.u64(0);
        o.u64(0);
    }
    entry(&mut o, kind::MODULE_LIST, rva);

    // ThreadNames (MINIDUMP_THREAD_NAME: u32 id, u64 RVA, packed).
    o.align();
    let rva = o.pos();
    o.u32(snap.threads.len() as u32);
    for (i, t) in snap.threads.iter().enumerate() {
        o.u32(t.tid as u32);
        o.u64(u64::from(thread_names.get(i).copied().unwrap_or(0)));
    }
    entry(&mut o, kind::THREAD_NAMES, rva);

    // MiscInfo: the process id.
    o.align();
    let rva = o.pos();
    o.u32(24);
    o.u32(1); // MINIDUMP_MISC1_PROCESS_ID
    o.u32(snap.pid as u32);
    o.zeros(12);
    entry(&mut o, kind::MISC_INFO, rva);

    // LinuxMaps.
    o.align();
    let rva = o.pos();
    o.bytes(maps_text(&snap.maps).as_bytes());
    entry(&mut o, kind::LINUX_MAPS, rva);

    // LinuxProcStatus (empty when not given).
    o.align();
    let rva = o.pos();
    o.bytes(extra.proc_status.unwrap_or_default());
    entry(&mut o, kind::LINUX_PROC_STATUS, rva);

    // Ours.
    o.align();
    let rva = o.pos();
    o.bytes(super::stream::encode(snap, extra).to_string().as_bytes());
    entry(&mut o, AIODEBUG_STREAM, rva);

    o.buf
}

/// `CONTEXT_AMD64` of `r` (control and integer registers; the rest zero).
fn context(o: &mut Out, r: &Registers) {
    let start = o.buf.len();
    o.zeros(48); // P1Home..P6Home
    o.u32(CONTEXT_FLAGS);
    o.u32(0x1f80); // MxCsr: the default
    o.u16(0x33); // cs: the x86_64 user code segment
    for _ in 0..4 {
        o.u16(0); // ds es fs gs
    }
    o.u16(0x2b); // ss: the user data segment
    o.u32(r.eflags as u32);
    o.zeros(48); // Dr0..Dr7
    for v in [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip,
    ] {
        o.u64(v);
    }
    let done = o.buf.len() - start;
    o.zeros(CONTEXT_SIZE - done);
}

/// `/proc/PID/maps` text of `maps` (newlines in paths escaped as the kernel does).
pub(crate) fn maps_text(maps: &[MapEntry]) -> String {
    let mut s = String::new();
    for m in maps {
        let flag = |b: bool, c: char| if b { c } else { '-' };
        let _ = write!(
            s,
            "{:x}-{:x} {}{}{}{} {:08x} {:02x}:{:02x} {}",
            m.start,
            m.end,
            flag(m.read, 'r'),
            flag(m.write, 'w'),
            flag(m.exec, 'x'),
            if m.shared { 's' } else { 'p' },
            m.offset,
            m.dev.0,
            m.dev.1,
            m.inode
        );
        match &m.path {
            MapPath::None => {}
            MapPath::File { path, deleted } => {
                let p = path.to_string_lossy().replace('\n', "\\012");
                let _ = write!(s, " {p}");
                if *deleted {
                    s.push_str(" (deleted)");
                }
            }
            MapPath::Special(name) => {
                let _ = write!(s, " {name}");
            }
        }
        s.push('\n');
    }
    s
}
