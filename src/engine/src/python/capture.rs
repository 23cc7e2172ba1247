//! What is read while the target is stopped: every thread state's frame
//! chain, as addresses only (frame, code object, instruction pointer, owner),
//! and the GIL's holder. Nothing is decoded here: code objects are immutable
//! and decoded after the target runs again ([`super::code`]).
//!
//! Every pointer is untrusted: lists are bounded in length and checked for
//! cycles, and any unreadable address ends that list with a problem noted.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::layout::{CurrentFrame, GilPlace, Layout};
use super::memory::{
    read_exact, read_u64, read_vec, u32_at, u64_at, u8_at, PageCache, PyResult, ReadMemory,
};

/// Most interpreters walked.
pub const MAX_INTERPRETERS: usize = 64;
/// Most thread states walked per interpreter.
pub const MAX_THREAD_STATES: usize = 4096;
/// Most frames walked per thread.
pub const MAX_FRAMES: usize = 4096;
/// Most frames walked in all.
pub const MAX_TOTAL_FRAMES: usize = 1 << 17;
/// Most pages cached during one walk (16 MiB).
const MAX_PAGES: usize = 4096;

/// One `_PyInterpreterFrame`, as addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// The frame's address.
    pub addr: u64,
    /// The code object (`f_code` / `f_executable`, tag bits cleared).
    pub executable: u64,
    /// `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13+).
    pub instr: u64,
    /// `owner`.
    pub owner: u8,
    /// `is_entry` (3.11).
    pub is_entry: bool,
}

/// One thread state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawThread {
    /// Address of its `PyThreadState`.
    pub tstate: u64,
    /// The kernel's thread id (`native_thread_id`).
    pub native_tid: u64,
    /// `thread_id` (the `pthread_t`, `threading.get_ident()`).
    pub thread_id: u64,
    /// Whether it held the GIL at the stop (`None`: unknown).
    pub holds_gil: Option<bool>,
    /// Frames, innermost first.
    pub frames: Vec<RawFrame>,
    /// The asyncio task its loop is running (3.14+, once `_asyncio` is
    /// loaded: [`Layout::tstate_running_task`]), 0 if none.
    pub running_task: u64,
    /// Why the chain ended early, if it did.
    pub problem: Option<String>,
}

/// Everything read during the stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCapture {
    /// Thread states, in list order.
    pub threads: Vec<RawThread>,
    /// Why the walk ended early, if it did.
    pub problem: Option<String>,
    /// Distinct memory pages read.
    pub pages: usize,
    /// Time the walk took (it adds to the freeze).
    pub took: Duration,
}

/// Walks every interpreter's thread states from `_PyRuntime` at `runtime`.
/// `only`: native thread ids whose frames to read (others are listed
/// without frames); `None` for all.
pub fn capture(
    mem: &dyn ReadMemory,
    l: &Layout,
    runtime: u64,
    only: Option<&HashSet<u64>>,
) -> RawCapture {
    let t0 = Instant::now();
    let cache = new_cache(mem);
    let mut out = capture_in(&cache, l, runtime, only);
    out.took = t0.elapsed();
    out
}

/// The page cache a walk reads through.
pub fn new_cache(mem: &dyn ReadMemory) -> PageCache<'_> {
    PageCache::new(mem, MAX_PAGES)
}

/// [`capture`] through `cache` (which may hold pages read ahead: see
/// [`PageCache::prefetch`]); `took` is left for the caller to set.
pub fn capture_in(
    cache: &PageCache<'_>,
    l: &Layout,
    runtime: u64,
    only: Option<&HashSet<u64>>,
) -> RawCapture {
    let t0 = Instant::now();
    let mut out = RawCapture::default();
    let mut total_frames = 0usize;
    let mut interps = CycleGuard::default();
    let mut n_interps = 0usize;
    let mut interp = match read_u64(cache, runtime.wrapping_add(l.runtime_interpreters_head)) {
        Ok(p) => p,
        Err(e) => {
            out.problem = Some(format!("cannot read the interpreter list: {e}"));
            out.took = t0.elapsed();
            return out;
        }
    };
    while interp != 0 {
        n_interps += 1;
        if n_interps > MAX_INTERPRETERS || interps.loops_at(interp) {
            out.problem = Some("the interpreter list loops or is too long".into());
            break;
        }
        let gil = read_gil(cache, l, runtime, interp);
        let mut seen = CycleGuard::default();
        let mut n_states = 0usize;
        let mut ts = match read_u64(cache, interp.wrapping_add(l.interp_threads_head)) {
            Ok(p) => p,
            Err(e) => {
                out.problem = Some(format!("cannot read interpreter 0x{interp:x}: {e}"));
                break;
            }
        };
        while ts != 0 {
            n_states += 1;
            if n_states > MAX_THREAD_STATES || seen.loops_at(ts) {
                out.problem = Some("a thread-state list loops or is too long".into());
                break;
            }
            let head = match read_small(cache, ts, l.tstate_read_len()) {
                Ok(h) => h,
                Err(e) => {
                    out.problem = Some(format!("cannot read thread state 0x{ts:x}: {e}"));
                    break;
                }
            };
            let mut t = RawThread {
                tstate: ts,
                native_tid: u64_at(&head, l.tstate_native_thread_id).unwrap_or(0),
                thread_id: u64_at(&head, l.tstate_thread_id).unwrap_or(0),
                holds_gil: gil.map(|(locked, holder)| locked && holder == ts),
                ..RawThread::default()
            };
            if let Some(off) = l.tstate_running_task {
                // One pointer: the task object itself is decoded after the
                // detach (its name and coroutine are fixed while it runs).
                t.running_task = read_u64(cache, ts.wrapping_add(off)).unwrap_or(0);
            }
            if only.is_none_or_contains(t.native_tid) {
                let budget = MAX_FRAMES.min(MAX_TOTAL_FRAMES.saturating_sub(total_frames));
                walk_frames(cache, l, &head, &mut t, budget);
                total_frames += t.frames.len();
            }
            out.threads.push(t);
            ts = u64_at(&head, l.tstate_next).unwrap_or(0);
        }
        interp = match read_u64(cache, interp.wrapping_add(l.interp_next)) {
            Ok(p) => p,
            Err(_) => break,
        };
    }
    out.pages = cache.pages();
    out.took = t0.elapsed();
    out
}

trait OnlyExt {
    fn is_none_or_contains(&self, tid: u64) -> bool;
}

impl OnlyExt for Option<&HashSet<u64>> {
    fn is_none_or_contains(&self, tid: u64) -> bool {
        self.map_or(true, |s| s.contains(&tid))
    }
}

/// Cycle detection on a linked list without hashing (Brent's algorithm):
/// a list that loops is caught within about twice its cycle's length.
#[derive(Debug, Default)]
struct CycleGuard {
    saved: u64,
    power: u64,
    steps: u64,
}

impl CycleGuard {
    /// Whether `node` closes a cycle.
    fn loops_at(&mut self, node: u64) -> bool {
        if self.power == 0 {
            self.power = 1;
        } else if node == self.saved {
            return true;
        }
        self.steps += 1;
        if self.steps == self.power {
            self.saved = node;
            self.power = self.power.saturating_mul(2);
            self.steps = 0;
        }
        false
    }
}

/// Bytes of a structure read during the stop without allocating (the
/// frame and thread-state heads are far smaller).
const SMALL: usize = 512;

/// Reads `len` bytes at `addr` into a buffer on the stack when they fit
/// (the walk's hot path: no allocation per frame), else into a `Vec`.
fn read_small(mem: &dyn ReadMemory, addr: u64, len: usize) -> PyResult<Small> {
    if len <= SMALL {
        let mut b = [0u8; SMALL];
        let dst = b.get_mut(..len).ok_or("read too long")?;
        read_exact(mem, addr, dst)?;
        Ok(Small::Stack(b, len))
    } else {
        read_vec(mem, addr, len).map(Small::Heap)
    }
}

// The big variant is the point: the hot path reads onto the stack.
#[allow(clippy::large_enum_variant)]
enum Small {
    Stack([u8; SMALL], usize),
    Heap(Vec<u8>),
}

impl std::ops::Deref for Small {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Small::Stack(b, n) => b.get(..*n).unwrap_or(&[]),
            Small::Heap(v) => v,
        }
    }
}

/// (locked, last holder) of the GIL that `interp` uses.
fn read_gil(mem: &dyn ReadMemory, l: &Layout, runtime: u64, interp: u64) -> Option<(bool, u64)> {
    let (base, locked, holder) = match l.gil {
        GilPlace::Runtime { locked, holder } => (runtime, locked, holder),
        GilPlace::Interpreter { locked, holder } => (interp, locked, holder),
    };
    let lo = locked.min(holder);
    let len = (locked.max(holder) - lo + 8) as usize;
    let b = read_vec(mem, base.wrapping_add(lo), len).ok()?;
    let is_locked = u32_at(&b, locked - lo)? != 0;
    Some((is_locked, u64_at(&b, holder - lo)?))
}

fn walk_frames(mem: &dyn ReadMemory, l: &Layout, head: &[u8], t: &mut RawThread, budget: usize) {
    let mut frame = match l.current_frame {
        CurrentFrame::Direct(off) => u64_at(head, off).unwrap_or(0),
        CurrentFrame::ViaCFrame {
            cframe,
            current_frame,
        } => {
            let cf = u64_at(head, cframe).unwrap_or(0);
            if cf == 0 {
                return;
            }
            match read_u64(mem, cf.wrapping_add(current_frame)) {
                Ok(f) => f,
                Err(e) => {
                    t.problem = Some(format!("cannot read the C frame: {e}"));
                    return;
                }
            }
        }
    };
    let mut seen = CycleGuard::default();
    let len = l.frame_read_len();
    while frame != 0 {
        if t.frames.len() >= budget {
            t.problem = Some(format!("stopped after {budget} Python frames (sanity cap)"));
            return;
        }
        if seen.loops_at(frame) {
            t.problem = Some(format!("the frame chain loops at 0x{frame:x}"));
            return;
        }
        let b = match read_small(mem, frame, len) {
            Ok(b) => b,
            Err(e) => {
                t.problem = Some(format!("cannot read frame 0x{frame:x}: {e}"));
                return;
            }
        };
        let field = |o: u64| u64_at(&b, o).unwrap_or(0);
        t.frames.push(RawFrame {
            addr: frame,
            executable: field(l.frame_executable) & !l.executable_tag_mask,
            instr: field(l.frame_instr),
            owner: u8_at(&b, l.frame_owner).unwrap_or(0),
            is_entry: l
                .frame_is_entry
                .is_some_and(|o| u8_at(&b, o).unwrap_or(0) != 0),
        });
        frame = field(l.frame_previous);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::python::code::tests::l311;
    use crate::python::memory::SliceMemory;

    pub(crate) fn put(b: &mut [u8], off: u64, v: u64) {
        b[off as usize..][..8].copy_from_slice(&v.to_le_bytes());
    }

    /// A 3.11 runtime at 0x1000 with one interpreter at 0x2000, thread
    /// states at 0x3000 (tid 101, holding the GIL) and 0x3400 (tid 102), and
    /// frames: tid 101 has `frames` (addr, code, entry) innermost first.
    pub(crate) fn state_3_11(frames: &[(u64, u64, bool)]) -> SliceMemory {
        let l = l311();
        let mut m = SliceMemory::new();
        let mut rt = vec![0u8; 512];
        put(&mut rt, l.runtime_interpreters_head, 0x2000);
        if let GilPlace::Runtime { locked, holder } = l.gil {
            put(&mut rt, locked, 1);
            put(&mut rt, holder, 0x3000);
        }
        m.add(0x1000, rt);
        let mut interp = vec![0u8; 64];
        put(&mut interp, l.interp_threads_head, 0x3000);
        m.add(0x2000, interp);
        let CurrentFrame::ViaCFrame {
            cframe,
            current_frame,
        } = l.current_frame
        else {
            unreachable!()
        };
        for (ts, tid, next, cf) in [
            (0x3000u64, 101u64, 0x3400u64, 0x3800u64),
            (0x3400, 102, 0, 0),
        ] {
            let mut t = vec![0u8; 400];
            put(&mut t, l.tstate_next, next);
            put(&mut t, l.tstate_native_thread_id, tid);
            put(&mut t, l.tstate_thread_id, tid + 0x7000_0000);
            put(&mut t, cframe, cf);
            m.add(ts, t);
        }
        let mut c = vec![0u8; 32];
        put(&mut c, current_frame, frames.first().map_or(0, |f| f.0));
        m.add(0x3800, c);
        for (i, &(addr, code, entry)) in frames.iter().enumerate() {
            let mut f = vec![0u8; 80];
            put(&mut f, l.frame_executable, code);
            put(
                &mut f,
                l.frame_instr,
                code + l.code_adaptive + 2 * (i as u64 + 1),
            );
            put(
                &mut f,
                l.frame_previous,
                frames.get(i + 1).map_or(0, |f| f.0),
            );
            f[l.frame_is_entry.unwrap() as usize] = entry as u8;
            m.add(addr, f);
        }
        m
    }

    #[test]
    fn walks_threads_frames_and_gil() {
        let mem = state_3_11(&[(0x5000, 0x10000, false), (0x5100, 0x20000, true)]);
        let c = capture(&mem, &l311(), 0x1000, None);
        assert_eq!(c.problem, None);
        assert_eq!(c.threads.len(), 2);
        let t = &c.threads[0];
        assert_eq!((t.native_tid, t.holds_gil), (101, Some(true)));
        assert_eq!(t.frames.len(), 2);
        assert_eq!(t.frames[0].executable, 0x10000);
        assert!(t.frames[1].is_entry && !t.frames[0].is_entry);
        assert_eq!(c.threads[1].holds_gil, Some(false));
        assert!(c.threads[1].frames.is_empty());
        // Only some threads: the others are listed without frames.
        let only: HashSet<u64> = [102].into_iter().collect();
        let c = capture(&mem, &l311(), 0x1000, Some(&only));
        assert!(c.threads[0].frames.is_empty());
    }

    #[test]
    fn the_cycle_guard_catches_loops_of_any_length() {
        for (tail, cycle) in [(0u64, 1u64), (0, 2), (3, 5), (10, 1), (7, 64), (100, 37)] {
            let mut g = CycleGuard::default();
            let node = |i: u64| {
                if i < tail {
                    i
                } else {
                    tail + (i - tail) % cycle
                }
            };
            let caught = (0..10_000).position(|i| g.loops_at(0x1000 + node(i) * 8));
            let at = caught.expect("a loop is caught") as u64;
            assert!(
                at <= 2 * (tail + cycle) + 2,
                "tail {tail} cycle {cycle}: step {at}"
            );
        }
        let mut g = CycleGuard::default();
        assert!((0..10_000u64).all(|i| !g.loops_at(i * 16)));
    }

    #[test]
    fn cycles_and_unreadable_pointers_end_the_walk() {
        // Frame 0x5100's previous points back to 0x5000.
        let mut mem = state_3_11(&[(0x5000, 0x10000, false), (0x5100, 0x20000, false)]);
        let l = l311();
        let mut f = vec![0u8; 80];
        put(&mut f, l.frame_previous, 0x5000);
        mem.add(0x5100, f);
        let c = capture(&mem, &l, 0x1000, None);
        assert!(c.threads[0].problem.as_deref().unwrap().contains("loops"));
        assert_eq!(c.threads[0].frames.len(), 2);
        // A thread-state list that loops.
        let mut t = vec![0u8; 400];
        put(&mut t, l.tstate_next, 0x3000);
        mem.add(0x3400, t);
        let c = capture(&mem, &l, 0x1000, None);
        assert!(c.problem.as_deref().unwrap().contains("loops"));
        // No runtime at all.
        let c = capture(&mem, &l, 0xdead_0000, None);
        assert!(c.problem.as_deref().unwrap().contains("interpreter list"));
        assert!(c.threads.is_empty());
        // A frame pointer into nowhere.
        let mem = state_3_11(&[(0x5000, 0x10000, false)]);
        let mut mem2 = mem.clone();
        let mut f = vec![0u8; 80];
        put(&mut f, l.frame_previous, 0x7777_0000);
        mem2.add(0x5000, f);
        let c = capture(&mem2, &l, 0x1000, None);
        assert!(c.threads[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("cannot read frame"));
    }
}
