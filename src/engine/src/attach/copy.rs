//! While stopped: registers and stacks only (`PTRACE_GETREGS`, one
//! `process_vm_readv` of each stack into a pre-faulted arena).

use std::time::Duration;

use nix::sys::ptrace;
use nix::unistd::Pid;

use super::attached::{Attached, TraceeState};
use super::prepare::PreStop;
use super::sys::to_registers;
use super::{SnapshotOptions, SMALL_STACK};
use crate::memory;
use crate::proc::{self, MapEntry};
use crate::snapshot::{StopKind, ThreadSnapshot};

/// What the copy gave.
pub(super) struct Copied {
    /// Every thread seized, in order (the stopped ones with registers).
    pub(super) threads: Vec<ThreadSnapshot>,
    /// (index in `threads`, offset in the arena, length) of stacks copied there.
    pub(super) spans: Vec<(usize, usize, usize)>,
    /// Indexes in `threads` of threads that did not stop.
    pub(super) late: Vec<usize>,
    /// The maps were read again (a stack pointer was in none).
    pub(super) maps_reread: bool,
}

/// Copies the registers and stack of every stopped thread of `att`
/// (threads that died meanwhile go to `vanished`).
pub(super) fn copy_threads(
    pid: i32,
    opts: &SnapshotOptions,
    att: &mut Attached,
    maps: &mut Vec<MapEntry>,
    arena: &mut [u8],
    vanished: &mut Vec<i32>,
) -> Copied {
    // (index in `threads`, offset in `arena`, length) of stacks copied there.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    let mut arena_used = 0usize;
    let mut threads: Vec<ThreadSnapshot> = Vec::with_capacity(att.tracees.len());
    // Indexes in `threads` of threads that did not stop.
    let mut late: Vec<usize> = Vec::new();
    let mut budget = opts.total_stack_cap;
    let mut maps_reread = false;
    for t in att.tracees.iter_mut() {
        let (name, state, cpu_time) = match t.facts.take() {
            Some(p) => (p.name, p.state, p.cpu_time),
            None => (String::new(), '?', Duration::ZERO),
        };
        let mut th = ThreadSnapshot {
            tid: t.tid,
            name,
            state,
            cpu_time,
            stop: StopKind::NotStopped(String::new()),
            regs: None,
            stack_start: 0,
            stack: Vec::new(),
            stack_truncated: false,
            stack_error: None,
            kernel_wait: None,
        };
        match &t.state {
            TraceeState::Gone | TraceeState::Dead => {
                vanished.push(t.tid);
                continue;
            }
            TraceeState::Late | TraceeState::Pending => {
                let waited = if th.state == 'D' {
                    opts.stuck_grace
                } else {
                    opts.stop_timeout
                };
                th.stop = StopKind::NotStopped(format!(
                    "did not stop within {:.1} ms (state {}: {})",
                    waited.as_secs_f64() * 1e3,
                    th.state,
                    proc::state_name(th.state)
                ));
                late.push(threads.len());
                threads.push(th);
                continue;
            }
            TraceeState::Stopped(kind) => th.stop = kind.clone(),
        }
        let regs = match ptrace::getregs(Pid::from_raw(t.tid)) {
            Ok(r) => to_registers(&r),
            Err(_) => {
                // It died in its stop (SIGKILL to the process).
                t.state = TraceeState::Dead;
                vanished.push(t.tid);
                continue;
            }
        };
        th.regs = Some(regs);
        th.stack_start = regs.rsp;
        let mut map = find_map(maps, regs.rsp).map(|m| m.end);
        if map.is_none() && !maps_reread {
            maps_reread = true;
            if let Ok(mut fresh) = proc::read_maps(pid) {
                fresh.sort_by_key(|m| m.start);
                *maps = fresh;
            }
            map = find_map(maps, regs.rsp).map(|m| m.end);
        }
        match map {
            None => {
                th.stack_error = Some(format!("stack pointer 0x{:x} is in no mapping", regs.rsp))
            }
            Some(end) => {
                let want = end.saturating_sub(regs.rsp);
                let cap = if budget >= opts.stack_cap {
                    opts.stack_cap
                } else {
                    SMALL_STACK.min(opts.stack_cap)
                };
                let len = usize::try_from(want).unwrap_or(usize::MAX).min(cap);
                th.stack_truncated = (len as u64) < want;
                // Into the pre-faulted arena if it fits (no page faults while
                // the target is frozen), else into a buffer of its own.
                let free = arena.len().saturating_sub(arena_used);
                let mut own = Vec::new();
                let (buf, in_arena) = if len <= free {
                    (&mut arena[arena_used..arena_used + len], true)
                } else {
                    own.resize(len, 0u8);
                    (&mut own[..], false)
                };
                match memory::read_into(pid, regs.rsp, buf) {
                    Ok(n) => {
                        if n < len {
                            th.stack_error = Some(format!(
                                "stack readable only up to 0x{:x}",
                                regs.rsp + n as u64
                            ));
                        }
                        if in_arena {
                            spans.push((threads.len(), arena_used, n));
                            arena_used += n;
                        } else {
                            own.truncate(n);
                            th.stack = own;
                        }
                        budget = budget.saturating_sub(n);
                    }
                    Err(e) => th.stack_error = Some(e.to_string()),
                }
            }
        }
        threads.push(th);
    }
    Copied {
        threads,
        spans,
        late,
        maps_reread,
    }
}

/// A thread an earlier capture of ours still holds: not stopped, its
/// kernel wait read now.
pub(super) fn held_thread(pid: i32, tid: i32, facts: Option<PreStop>) -> ThreadSnapshot {
    ThreadSnapshot {
        tid,
        name: facts.as_ref().map(|f| f.name.clone()).unwrap_or_default(),
        state: facts.as_ref().map_or('?', |f| f.state),
        cpu_time: facts.as_ref().map_or(Duration::ZERO, |f| f.cpu_time),
        stop: StopKind::NotStopped(
            "still held by an earlier capture that it never stopped for".to_string(),
        ),
        regs: None,
        stack_start: 0,
        stack: Vec::new(),
        stack_truncated: false,
        stack_error: None,
        kernel_wait: Some(proc::read_kernel_wait(pid, tid)),
    }
}

/// Finds the mapping containing `addr` in maps sorted by start address.
pub(super) fn find_map(maps: &[MapEntry], addr: u64) -> Option<&MapEntry> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    m.contains(addr).then_some(m)
}
