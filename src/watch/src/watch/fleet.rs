//! `watch --all`: one watcher for every process of the host that exports a
//! heartbeat.
//!
//! A supervisor scans `/proc` every [`SCAN_EVERY`] and runs the
//! single-target watch for each process with a registry, the watches of
//! every process interleaved on one thread (`multiplex`): each has its own
//! episodes, its own files under `DIR/<comm>-<pid>/`, its own StatsD tags
//! (`pid:`, `comm:`, and from its cgroup `container:` and `pod:`), and one
//! byte budget holds for all. A process that
//! exits ends its watch quietly; SIGINT/SIGTERM end every watch (files
//! being written finish), then StatsD is drained and the exit code is 0.
//!
//! Discovery is cheap on a healthy host: only pids that were not in the
//! previous listing are looked at (their stat, then their maps through the
//! engine's `locate` with a module cache shared by all processes); a process
//! without a heartbeat is remembered by (pid, start time) and looked at
//! again only while it is young (it may not have called `exec` yet) and
//! every [`RECHECK_EVERY`] (a library with a registry may be `dlopen`ed
//! late).

use super::event::{Event, Warning};
use super::files::{Outcome, OutputDir};
use super::{exit, new_ctx, watch_start, watch_step, Ctx, Log, LoopState, Parts, Stats, Step};
use crate::config::WatchConfig;
use aiodebug_engine::cgroup::{self, CgroupIds};
use aiodebug_engine::dump::{Dump, Dumper};
use aiodebug_engine::elf::ModuleCache;
use aiodebug_engine::target::monotonic_ns;
use aiodebug_engine::target::Target;
use aiodebug_engine::{proc, ErrorKind, Result};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often `/proc` is scanned for new processes: a process is watched
/// within this (plus one scan's time) of starting.
pub const SCAN_EVERY: Duration = Duration::from_millis(500);
/// How often processes without a heartbeat are looked at again (a
/// registry in a library loaded with `dlopen` after start).
pub const RECHECK_EVERY: Duration = Duration::from_secs(10);
/// A process younger than this when looked at is looked at again at the
/// next scan (a fork that has not exec'd its program yet).
const YOUNG_SECS: f64 = 3.0;
/// Processes watched at once at most; past this new ones are skipped with
/// one warning.
pub const MAX_WATCHED: usize = 1024;
/// Longest sleep of one process's watch. A single `watch` wakes at least
/// every 100 ms to keep its status line fresh; the fleet has none, and its
/// deadlines (a stall crossing the interval, the lag ring filling up) still
/// wake it on time, so healthy processes cost fewer reads.
const MAX_SLEEP_NS: u64 = 1_000_000_000;
/// USER_HZ: the unit of start times in `/proc/PID/stat` (fixed by the ABI).
const USER_HZ: f64 = 100.0;
/// Reads due this soon after the earliest one are made at the same
/// wake-up, earlier than due (an early read is only a read: the watch then
/// sleeps until its own deadline again, so no hang is seen later). With a
/// hundred processes read every `--interval`, wake-ups — a context switch
/// each, most of the cost of a healthy read — fall from one per read to one
/// per batch.
const BATCH_NS: u64 = 20_000_000;
/// Longest sleep of the thread of every watch: it sees a signal (and gives
/// every watch its last step) within this.
const MAX_IDLE_NS: u64 = 100_000_000;

/// Where one watch writes its dump files.
pub trait DumpSink: Send {
    /// The directory (it may not exist until the first file).
    fn path(&self) -> &Path;
    /// Bytes this watch wrote.
    fn used(&self) -> u64;
    /// Writes one file (see [`OutputDir::write`]).
    fn write(&mut self, name: &str, contents: &[u8]) -> Outcome;
}

impl DumpSink for OutputDir {
    fn path(&self) -> &Path {
        OutputDir::path(self)
    }
    fn used(&self) -> u64 {
        OutputDir::used(self)
    }
    fn write(&mut self, name: &str, contents: &[u8]) -> Outcome {
        OutputDir::write(self, name, contents)
    }
}

/// One byte budget shared by every process's files.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes `n` bytes if they fit; `Err(used)` otherwise.
    fn reserve(&self, n: u64) -> std::result::Result<(), u64> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .map(|_| ())
    }

    fn refund(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Bytes written so far, by every process.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// A process's folder `DIR/<comm>-<pid>/`, created with its first file, so
/// healthy processes leave nothing behind; every write counts against the
/// shared [`Budget`].
#[derive(Debug)]
pub struct SubDir {
    path: PathBuf,
    dir: Option<OutputDir>,
    budget: Arc<Budget>,
    used: u64,
}

impl SubDir {
    /// `root/name`, not created yet.
    pub fn new(root: &Path, name: &str, budget: Arc<Budget>) -> SubDir {
        SubDir {
            path: root.join(name),
            dir: None,
            budget,
            used: 0,
        }
    }
}

impl DumpSink for SubDir {
    fn path(&self) -> &Path {
        &self.path
    }

    fn used(&self) -> u64 {
        self.used
    }

    fn write(&mut self, name: &str, contents: &[u8]) -> Outcome {
        let len = contents.len() as u64;
        if let Err(used) = self.budget.reserve(len) {
            return Outcome::OverBudget {
                used,
                budget: self.budget.limit,
            };
        }
        if self.dir.is_none() {
            // The shared budget rules; the folder's own is unlimited.
            match OutputDir::open(&self.path, u64::MAX, false) {
                Ok(d) => self.dir = Some(d),
                Err(e) => {
                    self.budget.refund(len);
                    return Outcome::Failed(e);
                }
            }
        }
        let Some(dir) = self.dir.as_mut() else {
            self.budget.refund(len);
            return Outcome::Failed(format!("{}: not open", self.path.display()));
        };
        let outcome = dir.write(name, contents);
        match &outcome {
            Outcome::Written(_, n) => self.used = self.used.saturating_add(*n),
            _ => self.budget.refund(len),
        }
        outcome
    }
}

/// What a watch needs of a [`Dumper`]: a single `watch` owns one, the
/// watches of `--all` share one through [`DumpClient`].
pub trait Snapshots {
    /// See [`Dumper::prepare`].
    fn prepare(&mut self, pid: i32) -> Result<usize>;
    /// See [`Dumper::dump`].
    fn dump(&mut self, pid: i32, loops: Option<&HashMap<i32, String>>) -> Result<Dump>;
    /// See [`Dumper::dump_threads`].
    fn dump_threads(&mut self, pid: i32, tids: &[i32]) -> Result<Dump>;
}

impl Snapshots for Dumper {
    fn prepare(&mut self, pid: i32) -> Result<usize> {
        Dumper::prepare(self, pid)
    }
    fn dump(&mut self, pid: i32, loops: Option<&HashMap<i32, String>>) -> Result<Dump> {
        Dumper::dump(self, pid, loops)
    }
    fn dump_threads(&mut self, pid: i32, tids: &[i32]) -> Result<Dump> {
        Dumper::dump_threads(self, pid, tids)
    }
}

/// Module files a shared dumper caches before it starts afresh (bounded
/// memory over a long-running fleet whose processes come and go).
const MAX_CACHED_MODULES: usize = 256;

enum DumpRequest {
    Dump(i32, Option<HashMap<i32, String>>),
    Threads(i32, Vec<i32>),
}

/// A handle on the one [`Dumper`] of `watch --all`, which lives on a thread
/// of its own: the engine's symbol caches are single-threaded (`Rc`,
/// `RefCell`), and one cache per module file — not per process — keeps
/// memory bounded by distinct binaries. Dumps of two processes hanging at
/// once take turns.
#[derive(Debug, Clone)]
pub struct DumpClient {
    tx: std::sync::mpsc::Sender<(DumpRequest, std::sync::mpsc::Sender<Result<Dump>>)>,
}

impl DumpClient {
    /// Starts the dumper's thread; it ends when every client is dropped.
    pub fn start(options: aiodebug_engine::dump::DumpOptions) -> std::io::Result<DumpClient> {
        let (tx, rx) =
            std::sync::mpsc::channel::<(DumpRequest, std::sync::mpsc::Sender<Result<Dump>>)>();
        std::thread::Builder::new()
            .name("dumper".into())
            .spawn(move || {
                let mut dumper = Dumper::with_options(options.clone());
                for (req, reply) in rx {
                    let res = match req {
                        DumpRequest::Dump(pid, loops) => dumper.dump(pid, loops.as_ref()),
                        DumpRequest::Threads(pid, tids) => dumper.dump_threads(pid, &tids),
                    };
                    let _ = reply.send(res);
                    if dumper.cached_modules() > MAX_CACHED_MODULES {
                        dumper = Dumper::with_options(options.clone());
                    }
                }
            })?;
        Ok(DumpClient { tx })
    }

    fn ask(&self, req: DumpRequest) -> Result<Dump> {
        let (reply, answer) = std::sync::mpsc::channel();
        let gone =
            || aiodebug_engine::Error::io("the dumper thread", std::io::Error::other("it ended"));
        self.tx.send((req, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Snapshots for DumpClient {
    /// Nothing: preloading every process's debug info would cost memory per
    /// process; the first dump of a hang loads what it needs.
    fn prepare(&mut self, _pid: i32) -> Result<usize> {
        Ok(0)
    }
    fn dump(&mut self, pid: i32, loops: Option<&HashMap<i32, String>>) -> Result<Dump> {
        self.ask(DumpRequest::Dump(pid, loops.cloned()))
    }
    fn dump_threads(&mut self, pid: i32, tids: &[i32]) -> Result<Dump> {
        self.ask(DumpRequest::Threads(pid, tids.to_vec()))
    }
}

/// A command name made safe for a file name: anything but `[A-Za-z0-9._-]`
/// becomes `_`, and it never starts with a dot.
pub fn safe_name(comm: &str) -> String {
    let mut s: String = comm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push_str("process");
    }
    if s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    s
}

/// The folder of a process's files: `<comm>-<pid>`.
pub fn dir_name(comm: &str, pid: i32) -> String {
    format!("{}-{pid}", safe_name(comm))
}

/// The StatsD tags of one process: `pid:`, `comm:` and, when its cgroup
/// names them, `container:` and `pod:`.
pub fn process_tags(pid: i32, comm: &str, cg: &CgroupIds) -> Vec<(String, String)> {
    let mut tags = vec![
        ("pid".to_string(), pid.to_string()),
        ("comm".to_string(), safe_name(comm)),
    ];
    if let Some(c) = &cg.container {
        tags.push(("container".into(), c.clone()));
    }
    if let Some(p) = &cg.pod {
        tags.push(("pod".into(), p.clone()));
    }
    tags
}

/// A process not watched (no heartbeat, not matched, ours, refused),
/// remembered while its pid stays listed; a pid that leaves the listing and
/// comes back is another process.
#[derive(Debug, Clone, Copy)]
struct NotWatched {
    /// It was young when looked at: look again at the next scan.
    young: bool,
}

/// The supervisor's state.
struct Fleet<'a> {
    args: &'a WatchConfig,
    log: Log,
    root: PathBuf,
    budget: Arc<Budget>,
    stats: Option<Stats>,
    dumper: DumpClient,
    cache: ModuleCache,
    me: i32,
    /// New watches, to the thread of every watch.
    watches: Sender<NewWatch>,
    /// Watches that ended (pid, exit code), from that thread.
    ended: Receiver<(i32, u8)>,
    running: HashSet<i32>,
    not_watched: HashMap<i32, NotWatched>,
    /// (pid, start) of processes whose refusal was already reported.
    reported: HashSet<(i32, u64)>,
    previous: HashSet<i32>,
    last_recheck: Instant,
    cap_warned: bool,
    found: u64,
}

fn boot_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

impl Fleet<'_> {
    /// One scan of `/proc`: looks at new pids, forgets the ones gone.
    fn scan(&mut self) {
        let recheck = self.last_recheck.elapsed() >= RECHECK_EVERY;
        if recheck {
            self.last_recheck = Instant::now();
            // Files may have been replaced, inode numbers reused.
            self.cache.clear();
        }
        let pids = proc::list_pids();
        let now = boot_secs();
        for &pid in &pids {
            if pid == self.me || self.running.contains(&pid) {
                continue;
            }
            let again = match self.not_watched.get(&pid) {
                None => !self.previous.contains(&pid) || recheck,
                Some(n) => n.young || recheck,
            };
            if again {
                self.look_at(pid, now);
            }
        }
        let listed: HashSet<i32> = pids.into_iter().collect();
        self.not_watched.retain(|pid, _| listed.contains(pid));
        self.reported.retain(|(pid, _)| listed.contains(pid));
        self.previous = listed;
    }

    fn look_at(&mut self, pid: i32, now: f64) {
        let Ok(stat) = proc::read_stat(pid) else {
            return; // gone already
        };
        let start = stat.start_time_ticks;
        let young = now - start as f64 / USER_HZ < YOUNG_SECS;
        let skip = NotWatched { young };
        if stat.is_kernel_thread() {
            self.not_watched.insert(pid, NotWatched { young: false });
            return;
        }
        let wanted = self
            .args
            .match_comm
            .as_ref()
            .map_or(true, |re| re.is_match(&stat.comm));
        if !wanted {
            self.not_watched.insert(pid, skip);
            return;
        }
        let mut target = match Target::open_with_cache(pid, &mut self.cache) {
            Ok(t) => t,
            Err(e) => {
                if e.kind() == ErrorKind::Permission && self.reported.insert((pid, start)) {
                    self.log.emit(&Event::Unwatchable {
                        pid,
                        comm: &stat.comm,
                        message: e.to_string(),
                    });
                }
                self.not_watched.insert(pid, skip);
                return;
            }
        };
        // Our own watchers export an empty registry (the binary links the
        // companion for its demo target).
        if target.read().is_ok_and(|r| r.loops().next().is_none())
            && crate::status::is_own_tool(pid)
        {
            self.not_watched.insert(pid, skip);
            return;
        }
        // A loop that registers is seen up to a second late; the reads cost
        // a fraction (see Target::read_sparsely).
        target.read_sparsely();
        if self.running.len() >= MAX_WATCHED {
            if !self.cap_warned {
                self.cap_warned = true;
                self.log.emit(&Event::Warning(Warning::TooManyProcesses {
                    max: MAX_WATCHED,
                }));
            }
            self.not_watched.insert(pid, skip);
            return;
        }
        self.start(pid, &stat.comm, target);
    }

    fn start(&mut self, pid: i32, comm: &str, target: Target) {
        let cg = cgroup::read(pid);
        let tags = process_tags(pid, comm, &cg);
        let name = dir_name(comm, pid);
        self.found += 1;
        self.log.emit(&Event::ProcessFound {
            pid,
            comm,
            container: cg.container.as_deref(),
            pod: cg.pod.as_deref(),
            dir: &self.root.join(&name),
            other_namespace: target.in_other_pid_namespace(),
        });
        let watch = NewWatch {
            pid,
            comm: comm.to_string(),
            target,
            out: SubDir::new(&self.root, &name, Arc::clone(&self.budget)),
            stats: self.stats.as_ref().map(|s| s.with_tags(&tags)),
            dumper: self.dumper.clone(),
        };
        match self.watches.send(watch) {
            Ok(()) => {
                self.running.insert(pid);
            }
            Err(_) => self
                .log
                .emit(&Event::Warning(Warning::WatchThreadEnded { pid })),
        }
    }

    /// Forgets the watches that ended; returns the highest-priority code:
    /// `--exit-on-hang` gives 1 (and stops every watch).
    fn reap(&mut self, stop: &AtomicBool) -> u8 {
        let mut code = exit::OK;
        while let Ok((pid, c)) = self.ended.try_recv() {
            self.running.remove(&pid);
            // Not watched again while its pid stays listed (a zombie).
            self.not_watched.insert(pid, NotWatched { young: false });
            if c == exit::STALLED {
                code = exit::STALLED;
                stop.store(true, Ordering::Relaxed);
            }
        }
        code
    }
}

/// A process to watch, from the supervisor to the thread of every watch.
struct NewWatch {
    pid: i32,
    comm: String,
    target: Target,
    out: SubDir,
    stats: Option<Stats>,
    dumper: DumpClient,
}

/// One process's watch on the thread of every watch.
struct Running<'a> {
    ctx: Ctx<'a>,
    target: Target,
    st: LoopState,
    /// When its next read is due (our CLOCK_MONOTONIC, ns).
    due: u64,
    /// When its waiting threads were last looked at (idle gaps only).
    looked: u64,
}

impl<'a> Running<'a> {
    fn new(args: &'a WatchConfig, w: NewWatch) -> Running<'a> {
        let parts = Parts {
            pid: w.pid,
            target: w.target,
            log: Log::plain(args.json, Some((w.pid, w.comm))),
            out: Box::new(w.out),
            stats: w.stats,
            dumper: Box::new(w.dumper),
            max_sleep_ns: MAX_SLEEP_NS,
            preload: false,
        };
        let (mut ctx, target) = new_ctx(args, parts);
        let st = watch_start(&mut ctx);
        let now = monotonic_ns();
        Running {
            ctx,
            target,
            st,
            due: now,
            looked: now,
        }
    }

    /// When this watch wants the thread awake: its read, or the next look
    /// at its waiting threads while a monitor is in an idle gap (what
    /// [`super::workers::Workers::sleep`] does for a single watch).
    fn wake_at(&self) -> u64 {
        if self.ctx.workers.waiting() {
            let every = super::workers::KERNEL_EVERY.as_nanos() as u64;
            self.due.min(self.looked.saturating_add(every))
        } else {
            self.due
        }
    }
}

/// Which watches to step at `now` (indices into `due`, their next reads):
/// none until the earliest is due, then every one due within [`BATCH_NS`],
/// earliest first (the one due now is read on time, the others early);
/// every one when stopping (each takes its last step).
fn batch(due: &[u64], now: u64, stopping: bool, out: &mut Vec<usize>) {
    out.clear();
    if !stopping && due.iter().all(|&d| d > now) {
        return;
    }
    let horizon = now.saturating_add(BATCH_NS);
    out.extend((0..due.len()).filter(|&i| stopping || due.get(i).is_some_and(|&d| d <= horizon)));
    out.sort_by_key(|&i| due.get(i).copied());
}

/// The thread of every watch: one thread steps every process's watch, each
/// when its next read is due, the reads due within [`BATCH_NS`] of one
/// another at one wake-up. A thread per process cost a context switch per
/// read, a stack per process, and the kernel's scheduling of a hundred
/// threads. A snapshot of one process (a few ms, more for its first symbols)
/// delays the reads of the others by as much; snapshots already took turns
/// on the one dumper. Returns when `stop` is set and every watch took its
/// last step, or when the supervisor is gone and no watch is left.
fn multiplex(
    args: &WatchConfig,
    new: Receiver<NewWatch>,
    ended: Sender<(i32, u8)>,
    stop: &AtomicBool,
) {
    let mut watches: Vec<Running<'_>> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    let mut dues: Vec<u64> = Vec::new();
    let mut open = true;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && watches.is_empty() {
            return;
        }
        let now = monotonic_ns();
        // Idle gaps: a waiting thread that woke makes its watch read now.
        for w in &mut watches {
            if w.ctx.workers.waiting() && now >= w.wake_at() && now < w.due {
                w.looked = now;
                if w.ctx.workers.woke(&mut w.ctx.threads) {
                    w.due = now;
                }
            }
        }
        dues.clear();
        dues.extend(watches.iter().map(|w| w.due));
        batch(&dues, now, stopping, &mut order);
        if !order.is_empty() {
            let mut gone: Vec<usize> = Vec::new();
            for &i in &order {
                let Some(w) = watches.get_mut(i) else {
                    continue;
                };
                match watch_step(&mut w.ctx, &w.target, &mut w.st, stop) {
                    Step::Sleep(ns) => {
                        let t = monotonic_ns();
                        w.due = t.saturating_add(ns);
                        w.looked = t;
                    }
                    Step::Done(code) => {
                        w.ctx.log.finish();
                        let _ = ended.send((w.ctx.pid, code));
                        gone.push(i);
                    }
                }
            }
            // The process's StatsD sends drain with the fleet's, at the end.
            gone.sort_unstable();
            for i in gone.into_iter().rev() {
                watches.swap_remove(i);
            }
            continue;
        }
        let wake = watches
            .iter()
            .map(Running::wake_at)
            .min()
            .unwrap_or(u64::MAX);
        let wait = Duration::from_nanos(wake.saturating_sub(now).min(MAX_IDLE_NS));
        if !open {
            std::thread::sleep(wait);
            continue;
        }
        match new.recv_timeout(wait) {
            Ok(w) => watches.push(Running::new(args, w)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                open = false;
                if watches.is_empty() {
                    return;
                }
            }
        }
    }
}

/// Runs `watch --all`; returns the exit code.
pub fn run(args: &WatchConfig) -> u8 {
    // The root must be writable now, not at the first hang.
    if let Err(e) = OutputDir::open(&args.output_dir, args.max_dump_bytes, args.follow_symlinks) {
        crate::errln!("aiodebug-watch: {e}");
        return exit::OTHER;
    }
    let log = Log::plain(args.json, None);
    let stats = super::connect_stats(args, &log);
    let stop = super::stop_flag();
    let dumper = match DumpClient::start(super::dump_options(args)) {
        Ok(d) => d,
        Err(e) => {
            crate::errln!("aiodebug-watch: cannot start the dumper thread: {e}");
            return exit::OTHER;
        }
    };
    let (watches, new) = std::sync::mpsc::channel::<NewWatch>();
    let (ended_tx, ended) = std::sync::mpsc::channel::<(i32, u8)>();
    let mut fleet = Fleet {
        args,
        log,
        root: args.output_dir.clone(),
        budget: Arc::new(Budget::new(args.max_dump_bytes)),
        stats,
        dumper,
        cache: ModuleCache::default(),
        me: std::process::id() as i32,
        watches,
        ended,
        running: HashSet::new(),
        not_watched: HashMap::new(),
        reported: HashSet::new(),
        previous: HashSet::new(),
        last_recheck: Instant::now(),
        cap_warned: false,
        found: 0,
    };
    fleet.log.emit(&Event::StartedFleet {
        match_comm: args.match_comm.as_ref().map(|r| r.as_str()),
        interval: args.interval,
        dumps: args.dumps,
        output_dir: &args.output_dir,
    });
    let started = Instant::now();
    let end = args.duration.map(Duration::from_secs_f64);
    let mut code = exit::OK;
    let stop_ref: &AtomicBool = &stop;
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("watches".into())
            .spawn_scoped(scope, move || multiplex(args, new, ended_tx, stop_ref));
        if let Err(e) = spawned {
            crate::errln!("aiodebug-watch: cannot start the thread of the watches: {e}");
            code = exit::OTHER;
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            fleet.scan();
            code = code.max(fleet.reap(&stop));
            if end.is_some_and(|e| started.elapsed() >= e) {
                break;
            }
            // A signal does not cut this short: SIGTERM is seen within one scan.
            std::thread::sleep(SCAN_EVERY);
        }
        // Every watch sees the flag within the thread's longest sleep,
        // finishes the file it is writing and takes its last step; the
        // scope waits for that.
        stop.store(true, Ordering::Relaxed);
    });
    code = code.max(fleet.reap(&stop));
    if let Some(s) = &fleet.stats {
        s.drain(Duration::from_secs(2));
    }
    fleet.log.emit(&Event::FinishedFleet {
        processes: fleet.found,
        bytes: fleet.budget.used(),
        exit_code: code,
        statsd_errors: fleet.stats.as_ref().map(Stats::errors),
    });
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_due_close_together_are_made_at_one_wake_up() {
        let ms = 1_000_000u64;
        let due = [250 * ms, 100 * ms, 119 * ms, 121 * ms, 90 * ms];
        let mut out = Vec::new();
        // Nothing due yet: no wake-up's work.
        batch(&due, 89 * ms, false, &mut out);
        assert!(out.is_empty());
        // The earliest is due: it and every one due within 20 ms of now,
        // earliest first; 121 ms and 250 ms wait.
        batch(&due, 100 * ms, false, &mut out);
        assert_eq!(out, [4, 1, 2]);
        // Stopping: every watch takes its last step now.
        batch(&due, 0, true, &mut out);
        assert_eq!(out, [4, 1, 2, 3, 0]);
        batch(&[], 0, false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn names_are_safe_for_files_and_tags() {
        assert_eq!(dir_name("fx-tokio-curren", 42), "fx-tokio-curren-42");
        assert_eq!(dir_name("../etc/passwd", 7), "_._etc_passwd-7");
        assert_eq!(dir_name("", 1), "process-1");
        assert_eq!(dir_name(".hidden", 3), "_hidden-3");
        assert_eq!(safe_name("a b,c|d#e:f\u{fffd}"), "a_b_c_d_e_f_");
    }

    #[test]
    fn tags_name_the_process_its_container_and_pod() {
        let cg = CgroupIds {
            container: Some("ab".repeat(32)),
            pod: Some("8e9d4c2a-1b3f-4a5e-9c7d-0123456789ab".into()),
        };
        let t = process_tags(15038, "orders svc", &cg);
        assert_eq!(
            t,
            [
                ("pid".to_string(), "15038".to_string()),
                ("comm".into(), "orders_svc".into()),
                ("container".into(), "ab".repeat(32)),
                ("pod".into(), "8e9d4c2a-1b3f-4a5e-9c7d-0123456789ab".into()),
            ]
        );
        assert_eq!(process_tags(1, "x", &CgroupIds::default()).len(), 2);
    }

    #[test]
    fn one_budget_holds_across_folders_and_folders_appear_with_their_first_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let budget = Arc::new(Budget::new(10));
        let mut a = SubDir::new(root.path(), "a-1", Arc::clone(&budget));
        let mut b = SubDir::new(root.path(), "b-2", Arc::clone(&budget));
        assert!(!a.path().exists());
        assert!(matches!(a.write("1.txt", b"123456"), Outcome::Written(..)));
        assert!(a.path().join("1.txt").exists());
        assert!(matches!(
            b.write("2.txt", b"123456"),
            Outcome::OverBudget {
                used: 6,
                budget: 10
            }
        ));
        assert!(!b.path().exists(), "no folder for a skipped file");
        assert!(matches!(b.write("3.txt", b"1234"), Outcome::Written(..)));
        assert_eq!((a.used(), b.used(), budget.used()), (6, 4, 10));
        // A failed write (a name in no directory) gives its bytes back.
        assert!(matches!(
            b.write("no/such/dir.txt", b""),
            Outcome::Failed(_)
        ));
        assert_eq!(budget.used(), 10);
    }
}
