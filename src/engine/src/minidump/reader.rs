//! Minidump bytes back into a [`ProcessSnapshot`] (bounded, never panics).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::bytes::In;
use super::{kind, ReadError, Saved, AIODEBUG_STREAM, CONTEXT_SIZE, CV_ELF, MAX_STREAMS};
use super::{MAX_THREADS, SIGNATURE, VERSION};
use crate::module::{CodeRange, ModuleId, Modules, MAX_MODULES, MAX_VDSO};
use crate::proc::MapPath;
use crate::snapshot::{ProcessSnapshot, Registers, StopKind, ThreadSnapshot};

/// A stream's bytes by type (the first of each type).
type Streams<'a> = HashMap<u32, &'a [u8]>;

fn err<T>(s: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError(s.into()))
}

/// Reads a minidump: the snapshot, its live unwinding and annotations.
/// Needs at least a ThreadList and an AMD64 SystemInfo (or none).
pub fn read(data: &[u8]) -> Result<Saved, ReadError> {
    let f = In { data };
    if data.len() < 32 {
        return err(format!(
            "{} bytes: shorter than a minidump header (32)",
            data.len()
        ));
    }
    if f.u32(0, "the header")? != SIGNATURE {
        return err("no MDMP signature at the start of the file");
    }
    let version = f.u32(4, "the header")? & 0xffff;
    if version != VERSION {
        return err(format!("version 0x{version:x}, not 0x{VERSION:x}"));
    }
    let count = f.u32(8, "the header")? as usize;
    if count > MAX_STREAMS {
        return err(format!(
            "{count} streams listed (at most {MAX_STREAMS} are read)"
        ));
    }
    let dir = u64::from(f.u32(12, "the header")?);
    let time = f.u32(20, "the header")?;
    let mut streams: Streams<'_> = HashMap::new();
    for i in 0..count as u64 {
        let at = dir + 12 * i;
        let ty = f.u32(at, "the stream directory")?;
        let size = f.u32(at + 4, "the stream directory")?;
        let rva = f.u32(at + 8, "the stream directory")?;
        let body = f.slice(
            u64::from(rva),
            u64::from(size),
            &format!("stream {i} (type 0x{ty:x})"),
        )?;
        streams.entry(ty).or_insert(body);
    }
    if let Some(si) = streams.get(&kind::SYSTEM_INFO) {
        let arch = In { data: si }.u16(0, "the SystemInfo stream")?;
        if arch != super::ARCH_AMD64 {
            return err(format!(
                "processor architecture {arch}: only AMD64 (9) minidumps are read"
            ));
        }
    }
    let threads = read_threads(&f, &streams)?;
    let names = read_thread_names(&f, &streams)?;
    let memory = read_memory(&f, &streams)?;
    let maps = streams
        .get(&kind::LINUX_MAPS)
        .map(|b| crate::proc::parse_maps(b))
        .unwrap_or_default();
    let modules = read_modules(&f, &streams, &maps, &memory)?;
    let pid = streams
        .get(&kind::MISC_INFO)
        .and_then(|b| {
            let m = In { data: b };
            (m.u32(4, "").ok()? & 1 != 0).then(|| m.u32(8, "").ok())?
        })
        .unwrap_or(0) as i32;
    let mut snap = ProcessSnapshot {
        pid,
        name: String::new(),
        taken_at: UNIX_EPOCH + Duration::from_secs(u64::from(time)),
        freeze: Duration::ZERO,
        capture: Duration::ZERO,
        phases: Default::default(),
        threads: threads
            .into_iter()
            .map(|mut t| {
                if let Some(n) = names.get(&t.tid) {
                    t.name = n.clone();
                }
                t
            })
            .collect(),
        maps,
        modules,
        files: crate::module::TargetFiles::default(),
        vanished: Vec::new(),
        exited: false,
        // A minidump carries no cause facts: its causes come from the
        // registers alone.
        cause: Default::default(),
    };
    snap.name = snap
        .threads
        .iter()
        .find(|t| t.tid == snap.pid)
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let proc_status = streams
        .get(&kind::LINUX_PROC_STATUS)
        .filter(|b| !b.is_empty())
        .map(|b| b.to_vec());
    let (unwound, annotations, foreign) = match streams.get(&AIODEBUG_STREAM) {
        Some(b) => {
            let v: serde_json::Value = serde_json::from_slice(b)
                .map_err(|e| ReadError(format!("the aiodebug stream is not JSON: {e}")))?;
            let (u, a) = super::stream::apply(&v, &mut snap)?;
            (u, a, false)
        }
        None => (HashMap::new(), serde_json::Value::Null, true),
    };
    Ok(Saved {
        snapshot: snap,
        unwound,
        proc_status,
        annotations,
        foreign,
    })
}

/// A list stream: its count (capped) and the bytes after it. Writers may
/// pad the count to 8 bytes (`entry` bytes each): told by the size.
fn list<'a>(
    body: &'a [u8],
    entry: usize,
    cap: usize,
    what: &str,
) -> Result<(usize, &'a [u8]), ReadError> {
    let b = In { data: body };
    let n = b.u32(0, what)? as usize;
    if n > cap {
        return err(format!("{what}: {n} entries (at most {cap} are read)"));
    }
    let need = n.saturating_mul(entry);
    let rest = if body.len() >= need + 8 && body.len() - 8 == need {
        body.get(8..)
    } else {
        body.get(4..)
    }
    .unwrap_or_default();
    if rest.len() < need {
        return err(format!(
            "{what}: {n} entries of {entry} bytes do not fit in its {} bytes",
            body.len()
        ));
    }
    Ok((n, rest))
}

fn read_threads(f: &In<'_>, s: &Streams<'_>) -> Result<Vec<ThreadSnapshot>, ReadError> {
    let Some(body) = s.get(&kind::THREAD_LIST) else {
        return err("no ThreadList stream");
    };
    let (n, rest) = list(body, 48, MAX_THREADS, "the ThreadList stream")?;
    let r = In { data: rest };
    let mut out = Vec::with_capacity(n);
    // Stacks are copied out: their sum may not exceed the file (threads
    // pointing at one region many times would multiply an allocation).
    let mut copied = 0u64;
    for i in 0..n as u64 {
        let at = 48 * i;
        let w = "the ThreadList stream";
        let tid = r.u32(at, w)? as i32;
        let teb = r.u64(at + 16, w)?;
        let stack_start = r.u64(at + 24, w)?;
        let stack_size = r.u32(at + 32, w)?;
        let stack_rva = r.u32(at + 36, w)?;
        let ctx_size = r.u32(at + 40, w)?;
        let ctx_rva = r.u32(at + 44, w)?;
        copied += u64::from(stack_size);
        if copied > f.data.len() as u64 {
            return err(format!(
                "the thread stacks add up to more bytes than the file holds ({copied} at thread {tid})"
            ));
        }
        let stack = f
            .slice(
                u64::from(stack_rva),
                u64::from(stack_size),
                &format!("the stack of thread {tid}"),
            )?
            .to_vec();
        let regs = if ctx_size as usize >= CONTEXT_SIZE {
            let ctx = f.slice(
                u64::from(ctx_rva),
                CONTEXT_SIZE as u64,
                &format!("the context of thread {tid}"),
            )?;
            Some(registers(ctx, teb)?)
        } else if ctx_size == 0 {
            None
        } else {
            return err(format!(
                "thread {tid}: a context of {ctx_size} bytes is not CONTEXT_AMD64 ({CONTEXT_SIZE})"
            ));
        };
        out.push(ThreadSnapshot {
            tid,
            name: String::new(),
            state: '?',
            cpu_time: Duration::ZERO,
            stop: StopKind::Interrupted,
            regs,
            stack_start,
            stack,
            stack_truncated: false,
            stack_error: None,
            kernel_wait: None,
        });
    }
    Ok(out)
}

fn registers(ctx: &[u8], teb: u64) -> Result<Registers, ReadError> {
    let c = In { data: ctx };
    let w = "a thread context";
    let g = |i: u64| c.u64(120 + 8 * i, w);
    Ok(Registers {
        eflags: u64::from(c.u32(68, w)?),
        rax: g(0)?,
        rcx: g(1)?,
        rdx: g(2)?,
        rbx: g(3)?,
        rsp: g(4)?,
        rbp: g(5)?,
        rsi: g(6)?,
        rdi: g(7)?,
        r8: g(8)?,
        r9: g(9)?,
        r10: g(10)?,
        r11: g(11)?,
        r12: g(12)?,
        r13: g(13)?,
        r14: g(14)?,
        r15: g(15)?,
        rip: g(16)?,
        orig_rax: u64::MAX,
        fs_base: teb,
    })
}

fn read_thread_names(f: &In<'_>, s: &Streams<'_>) -> Result<HashMap<i32, String>, ReadError> {
    let Some(body) = s.get(&kind::THREAD_NAMES) else {
        return Ok(HashMap::new());
    };
    let w = "the ThreadNames stream";
    let b = In { data: body };
    let n = b.u32(0, w)? as usize;
    if n > MAX_THREADS {
        return err(format!("{w}: {n} entries"));
    }
    let mut out = HashMap::new();
    for i in 0..n as u64 {
        let tid = b.u32(4 + 12 * i, w)? as i32;
        let rva = b.u64(8 + 12 * i, w)?;
        let rva = u32::try_from(rva).map_err(|_| ReadError(format!("{w}: RVA 0x{rva:x}")))?;
        let name: String = f.string(rva, w)?.chars().take(64).collect();
        out.insert(tid, name);
    }
    Ok(out)
}

/// Memory ranges: (start address, bytes).
fn read_memory<'a>(f: &In<'a>, s: &Streams<'a>) -> Result<Vec<(u64, &'a [u8])>, ReadError> {
    let Some(body) = s.get(&kind::MEMORY_LIST) else {
        return Ok(Vec::new());
    };
    let w = "the MemoryList stream";
    let (n, rest) = list(body, 16, MAX_THREADS + MAX_MODULES, w)?;
    let r = In { data: rest };
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = r.u64(16 * i, w)?;
        let size = r.u32(16 * i + 8, w)?;
        let rva = r.u32(16 * i + 12, w)?;
        out.push((start, f.slice(u64::from(rva), u64::from(size), w)?));
    }
    Ok(out)
}

fn read_modules(
    f: &In<'_>,
    s: &Streams<'_>,
    maps: &[crate::proc::MapEntry],
    memory: &[(u64, &[u8])],
) -> Result<Modules, ReadError> {
    let Some(body) = s.get(&kind::MODULE_LIST) else {
        return Ok(Modules::default());
    };
    let w = "the ModuleList stream";
    let (n, rest) = list(body, 108, MAX_MODULES, w)?;
    let r = In { data: rest };
    let mut out = Modules::default();
    // One vDSO image is copied out, no more (see the stacks' budget).
    let mut images = 0;
    for i in 0..n as u64 {
        let at = 108 * i;
        let start = r.u64(at, w)?;
        let size = r.u32(at + 8, w)?;
        let name_rva = r.u32(at + 20, w)?;
        let cv_size = r.u32(at + 76, w)?;
        let cv_rva = r.u32(at + 80, w)?;
        let name = f.string(name_rva, w)?;
        let end = start.saturating_add(u64::from(size));
        let build_id = if cv_size > 4 {
            let cv = f.slice(u64::from(cv_rva), u64::from(cv_size), w)?;
            let sig = In { data: cv }.u32(0, w)?;
            (sig == CV_ELF)
                .then(|| cv.get(4..).map(<[u8]>::to_vec))
                .flatten()
                .filter(|b| b.len() <= 64)
        } else {
            None
        };
        let vdso = name == "[vdso]" || name.ends_with("linux-gate.so");
        let image = if vdso && images == 0 {
            images += 1;
            memory
                .iter()
                .find(|(a, b)| *a == start && b.len() as u64 <= MAX_VDSO)
                .map(|(_, b)| Arc::new(b.to_vec()))
        } else {
            None
        };
        // Executable mappings of the module, from LinuxMaps; else its range.
        let mut code: Vec<CodeRange> = maps
            .iter()
            .filter(|m| m.exec && m.start >= start && m.end <= end)
            .filter(|m| vdso || matches!(&m.path, MapPath::File { .. }))
            .map(|m| CodeRange {
                start: m.start,
                end: m.end,
                offset: if vdso { m.start - start } else { m.offset },
            })
            .collect();
        if code.is_empty() {
            code.push(CodeRange {
                start,
                end,
                offset: 0,
            });
        }
        let id = match (&build_id, &image) {
            (Some(b), _) => Some(ModuleId::BuildId(b.clone())),
            (None, Some(img)) => Some(ModuleId::Image(crate::module::fnv(img), img.len())),
            (None, None) => None,
        };
        out.modules.push(crate::module::Module {
            path: (!vdso).then(|| PathBuf::from(&name)),
            name: if vdso { "[vdso]".to_string() } else { name },
            start,
            end,
            // Until the aiodebug stream says better: PIE and shared objects
            // are linked at 0, so the bias is where they start.
            bias: start,
            build_id,
            id,
            code,
            file: None,
            image,
            problem: None,
        });
    }
    out.modules.sort_by_key(|m| m.start);
    Ok(out)
}
