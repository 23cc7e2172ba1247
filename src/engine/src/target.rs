//! The glue: open a process, locate its heartbeat registries, read its loops.

use crate::elf::{self, ModuleCache, RegionInTarget};
use crate::heartbeat::{self, Registry, Rejected};
use crate::memory::{ProcessMemory, ReadMemory};
use crate::tidmap::TidMap;
use crate::{proc, Error, Result};
use std::sync::Mutex;

/// Cap on one registry region read out of a target.
pub const MAX_REGION: u64 = 16 * 1024 * 1024;

/// A process whose heartbeat registries have been located.
#[derive(Debug)]
pub struct Target {
    pid: i32,
    regions: Vec<RegionInTarget>,
    problems: Vec<String>,
    clock_offset_ns: i64,
    /// Thread ids of the target's PID namespace to ours (the identity
    /// outside containers). Behind a lock so that `read` keeps `&self`.
    tids: Mutex<TidMap>,
    /// The two copies of each region, kept between reads: a watch reads
    /// several times a second, and allocating and zeroing ~80 KiB twice per
    /// read was a good part of its cost.
    buffers: Mutex<Vec<Copies>>,
    /// Sparse reads between full ones (see [`Target::read_sparsely`]).
    sparse: bool,
}

/// Full (not sparse) copies made so far, over every target (for tests and
/// benchmarks of the sparse read).
pub static FULL_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The two copies of one region and what the next read must copy again.
#[derive(Debug, Default)]
struct Copies {
    first: Vec<u8>,
    second: Vec<u8>,
    plan: Option<Plan>,
}

/// A sparse read of a region whose registries were decoded before: every
/// header, every live slot, every owned entry of the poll board, the worker
/// board (its header and owned entries) when a multi-thread runtime has
/// entries in it, nothing else — 1.2 KiB of the 86 KiB of a full copy for a
/// current_thread tokio process with one loop (the whole 8 KiB poll board
/// was most of what a sparse read copied and decoded). Each range
/// costs the kernel a page walk and pinning, so of the free slots and
/// entries only the first of each table is looked at (a head of 16 bytes,
/// see [`Plan::watch_free`]): a loop that registers, or a thread that claims
/// a board entry (once, at its first poll), changes it and makes the read a
/// full one. The plan is made at a full read and kept until the next.
///
/// Still tear-free: every byte decoded was copied twice in this read (the
/// kernel copies the first set of ranges before the second) and is trusted
/// only by the same rules as a full copy, or is a free slot or entry kept
/// from the last full read, which decodes as free (nothing is taken from
/// it).
///
/// The plan holds only while its live slots stay registered and the first
/// free ones stay free: their generation and in-use flag are compared with
/// the plan's, and any change (or a failed read) makes this read a full one.
#[derive(Debug, Clone)]
struct Plan {
    ranges: Vec<(usize, usize)>,
    /// (offset in the region, first bytes: generation, in-use or state) of
    /// every live slot and of the first free slot and entry of each table.
    heads: Vec<(usize, [u8; HEAD])>,
    /// (offset, geometry bytes) of every registry header.
    headers: Vec<(usize, [u8; GEOMETRY])>,
    made: std::time::Instant,
}

/// Bytes of a slot that say whether it is live: `gen` (8), `in_use` (4), pad.
const HEAD: usize = 16;
/// Longest time between two full reads of a sparse reader: what a writer
/// that does not claim the lowest free slot or entry first waits to be
/// seen (the companion's registrations are seen at the next read; see
/// `Plan`). A full read copies the whole region twice (86 KiB each): at 1 s
/// they were a fifth of a fleet watch's reads and most of the bytes it copied.
pub const FULL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes of a header that fix the geometry: magic to name capacity.
const GEOMETRY: usize = 32;

fn le_u32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn le_u16(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_le_bytes([s[0], s[1]])))
}

fn array_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Adds to `plan` every entry of a board (`count` entries of `size` bytes
/// from `start`) that a thread owns in `copy` (its `u32` state at `state`
/// is not 0: owned, or being claimed or released). A free entry is left
/// out: the buffers keep it as the full read saw it, free, so it decodes as
/// free until the next full read, which sees it if a thread claimed it
/// since (a thread claims its entry once, at its first poll).
fn owned_entries(
    plan: &mut Plan,
    copy: &[u8],
    start: usize,
    count: usize,
    size: usize,
    state: usize,
) -> Option<()> {
    let mut sentinel = false;
    for i in 0..count {
        let at = start.checked_add(i.checked_mul(size)?)?;
        if le_u32(copy, at.checked_add(state)?)? != 0 {
            plan.ranges.push((at, size));
        } else if !sentinel && size >= HEAD {
            sentinel = true;
            plan.watch_free(copy, at)?;
        }
    }
    Some(())
}

impl Plan {
    /// Copies the first [`HEAD`] bytes of the free slot or entry at `at` at
    /// every sparse read, and holds only while they stay as `copy` has them.
    /// The companion claims the lowest free slot or entry, so a loop that
    /// registers, or a thread that claims a board entry, changes exactly
    /// this one (its state word is in those bytes) and the read becomes a
    /// full one at once; a writer that claims out of order is seen at the
    /// next full read, [`FULL_READ_EVERY`]. Usually next to a live range,
    /// so merged into it: no extra range for the kernel.
    fn watch_free(&mut self, copy: &[u8], at: usize) -> Option<()> {
        self.heads.push((at, array_at(copy, at)?));
        self.ranges.push((at, HEAD));
        Some(())
    }

    /// The plan for the registries of `scan`, from the later copy; `None`
    /// when anything does not fit (then every read stays a full one).
    fn for_scan(copy: &[u8], scan: &heartbeat::Scan) -> Option<Plan> {
        use aiodebug::abi;
        if scan.registries.is_empty() {
            return None;
        }
        let mut plan = Plan {
            ranges: Vec::new(),
            heads: Vec::new(),
            headers: Vec::new(),
            made: std::time::Instant::now(),
        };
        for reg in &scan.registries {
            let off = reg.offset;
            let header_size = le_u32(copy, off + abi::header::HEADER_SIZE)?;
            let slot_size = le_u32(copy, off + abi::header::SLOT_SIZE)?;
            let slots = le_u32(copy, off + abi::header::SLOT_COUNT)?;
            if header_size < GEOMETRY || slot_size < HEAD {
                return None;
            }
            plan.headers.push((off, array_at(copy, off)?));
            plan.ranges.push((off, header_size));
            let mut sentinel = false;
            for i in 0..slots {
                let at = off
                    .checked_add(header_size)?
                    .checked_add(i.checked_mul(slot_size)?)?;
                let head: [u8; HEAD] = array_at(copy, at)?;
                let in_use = le_u32(&head, abi::slot::IN_USE)?;
                let gen = head.first().copied()?;
                // Live, or being (re)written: the whole slot.
                if in_use != 0 || gen % 2 == 1 {
                    plan.heads.push((at, head));
                    plan.ranges.push((at, slot_size));
                } else if !sentinel {
                    sentinel = true;
                    plan.watch_free(copy, at)?;
                }
            }
            if reg.poll_entries > 0 {
                let start = off
                    .checked_add(header_size)?
                    .checked_add(slots.checked_mul(slot_size)?)?;
                let entry = le_u16(copy, off + abi::header::POLL_ENTRY_SIZE)?;
                let count = reg.poll_entries as usize;
                owned_entries(&mut plan, copy, start, count, entry, abi::poll::STATE)?;
                // A current_thread runtime's worker entry says nothing its
                // loop's slot does not (its one worker runs the monitor):
                // the board is copied when a multi-thread runtime has one.
                let multi = reg.workers.iter().any(|w| !w.current_thread);
                if reg.worker_entries > 0 && multi {
                    // The worker board follows the poll board, aligned.
                    let end = start.checked_add(count.checked_mul(entry)?)?;
                    let board = end.div_ceil(abi::ALIGN).checked_mul(abi::ALIGN)?;
                    let size = le_u32(copy, board + abi::worker_board::ENTRY_SIZE)?;
                    plan.ranges.push((board, abi::WORKER_BOARD_HEADER));
                    let first = board.checked_add(abi::WORKER_BOARD_HEADER)?;
                    let count = reg.worker_entries as usize;
                    owned_entries(&mut plan, copy, first, count, size, abi::worker::STATE)?;
                }
            }
        }
        plan.ranges.sort_unstable();
        // Back-to-back ranges (the header and slot 0, neighbouring live
        // slots) as one.
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(plan.ranges.len());
        for &(o, l) in &plan.ranges {
            match merged.last_mut() {
                Some((mo, ml)) if *mo + *ml == o => *ml += l,
                _ => merged.push((o, l)),
            }
        }
        plan.ranges = merged;
        let fits = plan.ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0)
            && plan
                .ranges
                .last()
                .map_or(true, |&(o, l)| o + l <= copy.len());
        fits.then_some(plan)
    }

    /// Whether `copy` has the registries and slots this plan was made for.
    fn still_holds(&self, copy: &[u8]) -> bool {
        self.headers
            .iter()
            .all(|(at, h)| array_at::<GEOMETRY>(copy, *at).as_ref() == Some(h))
            && self
                .heads
                .iter()
                .all(|(at, h)| array_at::<HEAD>(copy, *at).as_ref() == Some(h))
    }
}

impl Copies {
    /// Copies the region twice, sparsely when the plan holds; whether it
    /// was a full copy (then the caller makes the next plan).
    fn read(&mut self, mem: &dyn ReadMemory, region: &RegionInTarget) -> Result<bool> {
        let len = region.size.min(MAX_REGION) as usize;
        if self.first.len() != len {
            self.plan = None;
            self.first.resize(len, 0);
            self.second.resize(len, 0);
        }
        if let Some(plan) = self
            .plan
            .as_ref()
            .filter(|p| p.made.elapsed() < FULL_READ_EVERY)
        {
            // Both copies in one system call where the reader can (the second
            // after the first).
            let sparse =
                mem.read_ranges_twice(region.addr, &plan.ranges, &mut self.first, &mut self.second);
            match sparse {
                Ok(()) if plan.still_holds(&self.first) && plan.still_holds(&self.second) => {
                    return Ok(false)
                }
                Err(e) if e.kind() != crate::ErrorKind::Other => return Err(e),
                _ => {} // a slot changed hands, or a short read: read it all
            }
        }
        FULL_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        mem.read_exact_into(region.addr, &mut self.first)?;
        mem.read_exact_into(region.addr, &mut self.second)?;
        Ok(true)
    }
}

/// One read of every registry of a target.
#[derive(Debug, Clone)]
pub struct Reading {
    /// CLOCK_MONOTONIC of the target's time namespace when the read finished.
    pub now_ns: u64,
    /// Validated registries, each with the module it was found in.
    pub registries: Vec<(RegionInTarget, Registry)>,
    /// Would-be registries that were rejected, with the module.
    pub rejected: Vec<(RegionInTarget, Rejected)>,
}

impl Reading {
    /// Every live loop across registries.
    pub fn loops(&self) -> impl Iterator<Item = &heartbeat::Loop> {
        self.registries.iter().flat_map(|(_, r)| r.loops.iter())
    }

    /// Registrations refused by full registries, summed.
    pub fn refused(&self) -> u64 {
        self.registries
            .iter()
            .map(|(_, r)| r.refused)
            .fold(0, u64::saturating_add)
    }
}

impl Target {
    /// Locates the registries of `pid`. Fails with [`Error::NoHeartbeat`] when no
    /// module mapped by the process carries one.
    pub fn open(pid: i32) -> Result<Target> {
        Self::open_with_cache(pid, &mut ModuleCache::default())
    }

    /// Like [`Target::open`], sharing parsed modules across processes.
    pub fn open_with_cache(pid: i32, cache: &mut ModuleCache) -> Result<Target> {
        if pid <= 0 {
            return Err(Error::NoSuchProcess { pid });
        }
        let maps = proc::read_maps(pid)?;
        let (regions, problems) = elf::locate_registries(pid, &maps, cache);
        if regions.is_empty() {
            return Err(Error::NoHeartbeat {
                pid,
                rejected: problems,
            });
        }
        Ok(Target {
            pid,
            regions,
            problems,
            clock_offset_ns: clock_offset_ns(pid),
            tids: Mutex::new(TidMap::build(pid)),
            buffers: Mutex::new(Vec::new()),
            sparse: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where the registries were found.
    pub fn regions(&self) -> &[RegionInTarget] {
        &self.regions
    }

    /// Problems met while locating (unreadable modules); informational.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Makes later reads sparse: between full reads (at most
    /// [`FULL_READ_EVERY`] apart, whenever a live loop unregisters or the
    /// first free slot or entry is claimed, and after
    /// [`Target::read_fully_next`]) only headers, live slots, owned poll
    /// board entries and, with a multi-thread runtime, the worker board are
    /// copied (see `Plan`). A writer that claims slots out of order is
    /// seen up to [`FULL_READ_EVERY`] late, and so are the worker entries of
    /// a multi-thread runtime started after the last full read; `watch
    /// --all` accepts that for a read several times cheaper.
    pub fn read_sparsely(&mut self) {
        self.sparse = true;
    }

    /// Makes the next read a full one (a watch that sees a loop late wants
    /// every board entry for the hang it may report).
    pub fn read_fully_next(&self) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        for copies in buffers.iter_mut() {
            copies.plan = None;
        }
    }

    /// Whether the target lives in another PID namespace than ours (its
    /// thread ids are mapped through `NSpid:`).
    pub fn in_other_pid_namespace(&self) -> bool {
        !self.tids.lock().map(|m| m.is_identity()).unwrap_or(true)
    }

    /// CLOCK_MONOTONIC now, in the target's time namespace.
    pub fn now_ns(&self) -> u64 {
        let ours = monotonic_ns();
        ours.saturating_add_signed(self.clock_offset_ns)
    }

    /// Reads every registry (two copies each) and decodes it. Thread ids are
    /// mapped to our PID namespace (see [`crate::tidmap`]).
    pub fn read(&self) -> Result<Reading> {
        let mut reading = Reading {
            now_ns: 0,
            registries: Vec::new(),
            rejected: Vec::new(),
        };
        // Rejected would-be registries past the ones kept with reasons.
        let mut more_rejected = 0usize;
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        buffers.resize_with(self.regions.len(), Default::default);
        let mem = ProcessMemory { pid: self.pid };
        for (region, copies) in self.regions.iter().zip(buffers.iter_mut()) {
            let full = copies.read(&mem, region)?;
            let mut scan = match (&copies.plan, full) {
                (Some(plan), false) => {
                    heartbeat::decode_ranges(&copies.first, &copies.second, &plan.ranges)
                }
                _ => heartbeat::decode_section(&copies.first, &copies.second),
            };
            // The plan is made at a full read and kept until the next one
            // (made again at every read, it never aged: a sparse watch made
            // no full read at all while its live slots held, and never saw
            // a loop register or a thread claim a board entry).
            if full {
                copies.plan = self
                    .sparse
                    .then(|| Plan::for_scan(&copies.second, &scan))
                    .flatten();
            }
            if let Ok(mut tids) = self.tids.lock() {
                for reg in &mut scan.registries {
                    tids.map_registry(reg);
                }
            }
            reading
                .registries
                .extend(scan.registries.into_iter().map(|r| (region.clone(), r)));
            more_rejected = more_rejected.saturating_add(scan.rejected_more);
            if reading.rejected.len() < heartbeat::MAX_REJECTED {
                reading
                    .rejected
                    .extend(scan.rejected.into_iter().map(|r| (region.clone(), r)));
            } else {
                more_rejected = more_rejected.saturating_add(scan.rejected.len());
            }
        }
        reading.now_ns = self.now_ns();
        if reading.registries.is_empty() {
            let mut rejected: Vec<String> = reading
                .rejected
                .iter()
                .take(heartbeat::MAX_REJECTED)
                .map(|(m, r)| {
                    format!(
                        "{} at 0x{:x}: {}",
                        m.module.display(),
                        m.addr + r.offset as u64,
                        r.reason
                    )
                })
                .collect();
            let more = more_rejected.saturating_add(
                reading
                    .rejected
                    .len()
                    .saturating_sub(heartbeat::MAX_REJECTED),
            );
            if more > 0 {
                rejected.push(format!("+{more} more"));
            }
            return Err(Error::NoHeartbeat {
                pid: self.pid,
                rejected,
            });
        }
        Ok(reading)
    }
}

/// Our CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            (ts.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

/// The target's CLOCK_MONOTONIC minus ours (time namespaces).
fn clock_offset_ns(pid: i32) -> i64 {
    let theirs = proc::read_timens_offsets(pid);
    let ours = proc::read_own_timens_offsets();
    theirs.monotonic_ns.saturating_sub(ours.monotonic_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A loop `name` of ours, ticked once, and our own registry read
    /// sparsely.
    fn sparse_self(name: &str) -> (aiodebug::Heartbeat, Target) {
        let hb = aiodebug::Heartbeat::with_period(name, std::time::Duration::from_millis(5));
        hb.tick();
        let mut target = Target::open(std::process::id() as i32).expect("our own registry");
        target.read_sparsely();
        (hb, target)
    }

    #[test]
    fn reads_after_the_first_are_sparse_until_a_slot_changes_hands() {
        let (hb, target) = sparse_self("sparse");
        let full = |t: &Target| {
            let before = FULL_READS.load(Ordering::Relaxed);
            let r = t.read().expect("read");
            (FULL_READS.load(Ordering::Relaxed) - before, r)
        };
        let (n, r) = full(&target);
        assert!(n >= 1, "the first read is a full one");
        assert!(r.loops().any(|l| l.name == "sparse"));
        let mut sparse = 0;
        for i in 0..20u64 {
            hb.tick();
            let (n, r) = full(&target);
            let l = r.loops().find(|l| l.name == "sparse").expect("loop");
            assert_eq!(l.ticks, 2 + i, "ticks read right");
            assert!(!l.lags.is_empty());
            // Other tests of this process may register loops meanwhile.
            sparse += u32::from(n == 0);
        }
        assert!(sparse >= 15, "only {sparse} of 20 reads were sparse");
        // A new registration takes the first free slot, which the plan
        // watches: the next read is a full one and names it right.
        let other = aiodebug::Heartbeat::register("sparse-2");
        other.tick();
        let (n, r) = full(&target);
        assert!(n >= 1);
        assert!(r.loops().any(|l| l.name == "sparse-2"));
        // Unregistering changes a live slot's head: a full read at once.
        drop(other);
        let (n, r) = full(&target);
        assert!(n >= 1);
        assert!(!r.loops().any(|l| l.name == "sparse-2"));
    }

    #[test]
    fn a_thread_claiming_a_poll_entry_is_seen_at_the_next_sparse_read() {
        let (_hb, target) = sparse_self("claims");
        let polls = |t: &Target, tid: u32| {
            let r = t.read().expect("read");
            r.registries
                .iter()
                .flat_map(|(_, reg)| reg.polling.iter())
                .any(|p| p.tid == tid)
        };
        assert!(!polls(&target, 0), "the plan is made");
        // A thread's first poll claims the first free entry and stays in it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let label = aiodebug::polling::Label::here("claims-poll");
            let _poll = aiodebug::polling::enter(&label);
            let _ = tx.send(nix::unistd::gettid().as_raw() as u32);
            let _ = done_rx.recv();
        });
        let tid = rx.recv().expect("the thread's id");
        let seen = polls(&target, tid);
        let _ = done_tx.send(());
        let _ = worker.join();
        assert!(seen, "the poll of a newly claimed entry is seen at once");
    }
}
