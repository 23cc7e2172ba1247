//! Every system call one thread makes while it stalls: a count of its
//! entries (`raw_syscalls:sys_enter`, counting) and which calls they were (the
//! same event sampling into a small ring, the call number read from each raw
//! record), so that a stalled loop thread can be told **stuck in one call**
//! (a handful of entries: our own snapshots restart the call it sleeps in)
//! from **busy** (a retry loop of sleeps, reads or yields: hundreds) and
//! from pure computation (none).
//!
//! The perf event itself (the only unsafe code) is in [`crate::perf`]; this
//! module holds the tracepoint lookup (once per watcher process, cached) and
//! the pure parsers, tested on bytes.
//!
//! Cost: while any syscall tracepoint is enabled, every thread of the host
//! enters and leaves its system calls through the kernel's slow path (the
//! tracepoint work flag is set on all tasks), whether or not it is the one
//! counted; the counted thread also pays one sample write per call (until
//! the ring is full: then a failed reservation). The watch therefore opens a
//! counter only while a stall lasts (`scripts/bench-syscall-loop
//! raw-unrelated` measures what an unrelated process pays per call).

use crate::cause::syscalls::{self, Arch};
use crate::cause::{SyscallActivity, SyscallCount};
use crate::error::Result;
use crate::perf::{self, SysEnterEvent};
use std::path::Path;
use std::sync::OnceLock;

/// Data pages of a counter's ring (4 KiB each): 8 pages hold ~400 records
/// of 80 bytes, the calls between two snapshots of a thread that retries
/// every few ms; a faster loop fills it and the rest is counted, not named.
pub const RING_PAGES: usize = 8;

/// Distinct call numbers tallied per counter: a thread that makes more
/// kinds of calls than this during one stall gets the first ones named (a
/// number comes from the target's registers: never allocate per value).
pub const MAX_DISTINCT: usize = 32;

/// The `raw_syscalls:sys_enter` tracepoint: its id and where the call
/// number is in its raw record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysEnter {
    /// The tracepoint id (`events/raw_syscalls/sys_enter/id`).
    pub id: u64,
    /// Offset of the `long id` field in the raw record.
    pub nr_offset: usize,
    /// Its size in bytes (8 on 64-bit kernels, 4 on 32-bit ones).
    pub nr_size: usize,
}

/// Parses a tracefs `format` file: the offset and size of field `name`
/// (`field:long id;\toffset:8;\tsize:8;\tsigned:1;`). `None` if absent or
/// malformed, or a size other than 4 or 8.
pub fn parse_format_field(data: &[u8], name: &str) -> Option<(usize, usize)> {
    let text = std::str::from_utf8(data).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        // The declaration ends with the field's name (`long id`, `unsigned
        // long args[6]`).
        let field = decl.rsplit(' ').next()?;
        if field != name {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse::<usize>().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse::<usize>().ok();
            }
        }
        let size = size.filter(|s| matches!(s, 4 | 8))?;
        Some((offset?, size))
    })
}

impl SysEnter {
    /// Reads the tracepoint's id and format from tracefs (mounting a private
    /// one if none is mounted, as [`crate::perf::WaitTracepoints::find`]).
    pub fn find() -> Result<SysEnter> {
        let (tp, _, _) = perf::from_tracefs("events/raw_syscalls/sys_enter", |dir: &Path| {
            let ev = dir.join("events/raw_syscalls/sys_enter");
            let id = perf::parse_id(&perf::read_capped(&ev.join("id"), 64).ok()?)?;
            // A format file is a few hundred bytes.
            let format = perf::read_capped(&ev.join("format"), 8192).ok()?;
            let (nr_offset, nr_size) = parse_format_field(&format, "id")?;
            Some(SysEnter {
                id,
                nr_offset,
                nr_size,
            })
        })?;
        Ok(tp)
    }

    /// [`SysEnter::find`], once per process: the answer (or the reason there
    /// is none) is kept, so that stalls after the first read nothing.
    pub fn cached() -> std::result::Result<SysEnter, String> {
        static ONCE: OnceLock<std::result::Result<SysEnter, String>> = OnceLock::new();
        ONCE.get_or_init(|| SysEnter::find().map_err(|e| e.to_string()))
            .clone()
    }
}

/// One record of a counter's ring, as [`parse_records`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysRecord {
    /// A sampled entry: the call's number.
    Call(u64),
    /// The kernel dropped this many samples (the ring was full).
    Lost(u64),
    /// Any other record (throttling, ...).
    Other,
}

/// Parses the unread bytes of a ring written with `PERF_SAMPLE_RAW` only
/// (records as [`perf::records`] walks them): for a sample `u32 raw_size`
/// then the raw tracepoint record, whose call number is `nr_size` bytes at
/// `nr_offset`; for `PERF_RECORD_LOST` `u64 id, u64 lost`.
pub fn parse_records(data: &[u8], nr_offset: usize, nr_size: usize) -> Vec<SysRecord> {
    perf::records(data)
        .map(|(kind, rec)| match kind {
            perf::PERF_RECORD_SAMPLE => {
                // The raw record must hold the field, inside this record.
                let raw_size = perf::u32_at(rec, 8).map_or(0, |s| s as usize);
                let fits = nr_offset
                    .checked_add(nr_size)
                    .is_some_and(|end| end <= raw_size)
                    && 12 + raw_size <= rec.len();
                let field = 12 + nr_offset;
                let nr = match (fits, nr_size) {
                    (true, 8) => perf::u64_at(rec, field).map(|v| v as i64),
                    (true, 4) => perf::u32_at(rec, field).map(|v| i64::from(v as i32)),
                    _ => None,
                };
                match nr {
                    Some(n) if n >= 0 => SysRecord::Call(n as u64),
                    _ => SysRecord::Other,
                }
            }
            perf::PERF_RECORD_LOST => match perf::u64_at(rec, 16) {
                Some(n) => SysRecord::Lost(n),
                None => SysRecord::Other,
            },
            _ => SysRecord::Other,
        })
        .collect()
}

/// Sampled calls per number, at most [`MAX_DISTINCT`] numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    counts: Vec<(u64, u64)>,
    /// Samples taken (named or not).
    pub sampled: u64,
    /// Samples the kernel dropped (a full ring).
    pub lost: u64,
}

impl Tally {
    /// Takes the records of one drain.
    pub fn add(&mut self, records: &[SysRecord]) {
        for r in records {
            match *r {
                SysRecord::Call(nr) => {
                    self.sampled += 1;
                    if let Some((_, c)) = self.counts.iter_mut().find(|(n, _)| *n == nr) {
                        *c += 1;
                    } else if self.counts.len() < MAX_DISTINCT {
                        self.counts.push((nr, 1));
                    }
                }
                SysRecord::Lost(n) => self.lost = self.lost.saturating_add(n),
                SysRecord::Other => {}
            }
        }
    }

    /// The `n` most sampled calls, most first (ties: lower number first).
    pub fn top(&self, n: usize) -> Vec<(u64, u64)> {
        let mut v = self.counts.clone();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// The architecture whose call numbers the records hold (ours: the watcher
/// and the target run on one kernel).
fn arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::Aarch64
    } else {
        Arch::X86_64
    }
}

/// Counts (and samples) one thread's system calls from [`SyscallCounter::open`]
/// on; the event is closed on drop.
#[derive(Debug)]
pub struct SyscallCounter {
    tid: i32,
    tp: SysEnter,
    event: SysEnterEvent,
    opened_ns: u64,
    tally: Tally,
}

impl SyscallCounter {
    /// Opens the counter on thread `tid` of process `pid`. Errors:
    /// [`crate::Error::PermissionDenied`] naming `perf_event_paranoid` when the
    /// kernel refuses, [`crate::Error::Exited`] with the tid when the thread is gone.
    pub fn open(pid: i32, tid: i32, tp: SysEnter) -> Result<SyscallCounter> {
        let event =
            SysEnterEvent::open(tid, tp.id, RING_PAGES).map_err(|e| perf::classify(pid, tid, e))?;
        Ok(SyscallCounter {
            tid,
            tp,
            event,
            opened_ns: crate::target::monotonic_ns(),
            tally: Tally::default(),
        })
    }

    /// The thread counted.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// What the thread did since the counter was opened; `ours` is how many
    /// of our own stops fell in that time (each may restart the call a
    /// blocked thread is in: one entry that is not the thread's doing).
    pub fn activity(&mut self, ours: u32) -> std::io::Result<SyscallActivity> {
        let entered = self.event.count()?;
        let window_ns = crate::target::monotonic_ns().saturating_sub(self.opened_ns);
        let bytes = self.event.drain();
        self.tally
            .add(&parse_records(&bytes, self.tp.nr_offset, self.tp.nr_size));
        let top = self
            .tally
            .top(3)
            .into_iter()
            .map(|(nr, count)| SyscallCount {
                nr,
                name: syscalls::name(arch(), nr),
                count,
            })
            .collect();
        Ok(SyscallActivity {
            entered,
            window_ns,
            ours,
            top,
            sampled: self.event.samples().then_some(self.tally.sampled),
            lost: self.tally.lost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/raw_syscalls/sys_enter/format` as kernel 6.x writes it.
    const FORMAT: &[u8] = b"name: sys_enter\nID: 22\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;\n\
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;\n\
\n\
print fmt: \"NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)\", REC->id, ...\n";

    #[test]
    fn the_format_gives_the_number_field() {
        assert_eq!(parse_format_field(FORMAT, "id"), Some((8, 8)));
        assert_eq!(parse_format_field(FORMAT, "common_pid"), Some((4, 4)));
        // `args[6]` is not `args`; a 2-byte field is not a call number.
        assert_eq!(parse_format_field(FORMAT, "args"), None);
        assert_eq!(parse_format_field(FORMAT, "common_type"), None);
        assert_eq!(parse_format_field(b"", "id"), None);
        assert_eq!(
            parse_format_field(b"\tfield:long id;\toffset:x;\tsize:8;", "id"),
            None
        );
        assert_eq!(parse_format_field(&[0xff, 0xfe], "id"), None);
    }

    /// A sample as the kernel writes it (little endian): header type 9,
    /// size 80; raw size 68 (a 64-byte record padded); common fields, `id`
    /// = `nr`, six arguments.
    fn sample(nr: i64) -> Vec<u8> {
        let mut d = vec![9, 0, 0, 0, 1, 0, 80, 0];
        d.extend_from_slice(&68u32.to_le_bytes());
        d.extend_from_slice(&[0x16, 0, 0, 0, 0x39, 0x30, 0, 0]); // type 22, pid 12345
        d.extend_from_slice(&nr.to_le_bytes());
        d.extend_from_slice(&[0; 48]); // args
        d.extend_from_slice(&[0; 4]); // padding to 8 bytes
        assert_eq!(d.len(), 80);
        d
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ring_records_give_call_numbers_and_losses() {
        let mut d = sample(230);
        d.extend(sample(24));
        // LOST: type 2, size 24, id, lost 7.
        d.extend_from_slice(&[2, 0, 0, 0, 0, 0, 24, 0]);
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&7u64.to_le_bytes());
        // THROTTLE (type 5): a gap, not a call.
        d.extend_from_slice(&[5, 0, 0, 0, 0, 0, 24, 0]);
        d.extend_from_slice(&[0; 16]);
        d.extend(sample(-1));
        assert_eq!(
            parse_records(&d, 8, 8),
            vec![
                SysRecord::Call(230),
                SysRecord::Call(24),
                SysRecord::Lost(7),
                SysRecord::Other,
                SysRecord::Other,
            ]
        );
        // A field past the raw record's end is no number.
        assert_eq!(parse_records(&sample(1), 64, 8), vec![SysRecord::Other]);
        // A raw size larger than the record: no number, and the walk goes on
        // by the header's size.
        let mut lying = sample(1);
        lying[8..12].copy_from_slice(&4000u32.to_le_bytes());
        lying.extend(sample(2));
        assert_eq!(
            parse_records(&lying, 8, 8),
            vec![SysRecord::Other, SysRecord::Call(2)]
        );
        // Truncated, zero-sized, empty.
        assert_eq!(parse_records(&sample(1)[..79], 8, 8), vec![]);
        assert_eq!(parse_records(&[9, 0, 0, 0, 0, 0, 0, 0], 8, 8), vec![]);
        assert_eq!(parse_records(&[], 8, 8), vec![]);
        // A 4-byte number (a 32-bit kernel's `long`).
        let mut small = sample(0);
        small[20..24].copy_from_slice(&35u32.to_le_bytes());
        assert_eq!(parse_records(&small, 8, 4), vec![SysRecord::Call(35)]);
    }

    #[test]
    fn the_tally_is_bounded_and_ranks_the_calls() {
        let mut t = Tally::default();
        t.add(&[
            SysRecord::Call(230),
            SysRecord::Call(230),
            SysRecord::Call(24),
            SysRecord::Call(7),
            SysRecord::Call(24),
            SysRecord::Call(230),
            SysRecord::Lost(5),
            SysRecord::Other,
        ]);
        assert_eq!(t.top(3), vec![(230, 3), (24, 2), (7, 1)]);
        assert_eq!(t.top(1), vec![(230, 3)]);
        assert_eq!((t.sampled, t.lost), (6, 5));
        // Hostile numbers: all counted as samples, at most MAX_DISTINCT kept.
        let many: Vec<SysRecord> = (1000..1000 + 10 * MAX_DISTINCT as u64)
            .map(SysRecord::Call)
            .collect();
        t.add(&many);
        assert_eq!(t.counts.len(), MAX_DISTINCT);
        assert_eq!(t.sampled, 6 + 10 * MAX_DISTINCT as u64);
        assert_eq!(t.top(3)[0], (230, 3));
    }
}
