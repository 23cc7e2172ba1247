//! A running `aiodebug-watch watch PID --json` and the children the tests
//! start beside it, killed (and reaped) on drop, also when a test fails.

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) on drop.
pub struct Kid(pub Child);

impl std::ops::Deref for Kid {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `aiodebug-watch watch PID --json --output-dir DIR EXTRA...`, its events
/// read on a thread; every event received is kept in `seen`.
pub struct Watch {
    /// The watcher.
    pub child: Kid,
    events: mpsc::Receiver<Value>,
    /// Every event received so far, in order.
    pub seen: Vec<Value>,
}

impl Watch {
    /// Starts the watch (without waiting for any event).
    pub fn start(pid: i32, dir: &Path, extra: &[&str]) -> Watch {
        let mut child = Command::new(super::watch_bin())
            .args(["watch", &pid.to_string(), "--json", "--output-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start watch");
        let out = child.stdout.take().expect("stdout");
        Watch {
            child: Kid(child),
            events: super::json_events(out),
            seen: Vec::new(),
        }
    }

    /// Starts the watch and waits for its first `loop_found`: from then on
    /// that loop's hangs are caught (the target's symbols are loaded before
    /// the first read, so nothing slow is left to do).
    pub fn started(pid: i32, dir: &Path, extra: &[&str]) -> Watch {
        let mut w = Watch::start(pid, dir, extra);
        // As long as a fixture may take to start: loading the target's debug
        // info on a loaded 2-core machine takes seconds.
        w.wait_for("loop_found", super::TIMEOUT);
        w
    }

    /// The next event of `kind` within `timeout` (panics with every event
    /// seen otherwise).
    pub fn wait_for(&mut self, kind: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["event"] == kind {
                        return v;
                    }
                }
                Err(e) => panic!(
                    "no {kind:?} event within {timeout:?} ({e}); seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The first event of `kind`, already seen or still to come.
    pub fn first(&mut self, kind: &str, timeout: Duration) -> Value {
        match self.seen.iter().find(|v| v["event"] == kind) {
            Some(v) => v.clone(),
            None => self.wait_for(kind, timeout),
        }
    }

    /// The next event for which `pred` holds, within `timeout`; panics
    /// naming `what` (and with every event seen) otherwise, also when the
    /// watch exits first.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(e) => panic!(
                    "no event {what} within {timeout:?} ({e}); seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The `loop_found` of the loop `name`, already seen or still to come:
    /// a target with several loops says each in turn, and a loop is watched
    /// (its hang can be caught) only from its own `loop_found` on.
    pub fn loop_found(&mut self, name: &str, timeout: Duration) -> Value {
        let is_it = |v: &Value| v["event"] == "loop_found" && v["loop"] == name;
        match self.seen.iter().find(|v| is_it(v)) {
            Some(v) => v.clone(),
            None => self.wait_until(&format!("loop_found of loop {name:?}"), timeout, is_it),
        }
    }

    /// Collects events until `done` holds for every event seen so far (also
    /// those seen before), or `timeout` passes; whether it held. For waits
    /// whose end the test judges itself (a round tried again).
    pub fn collect_until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => return done(&self.seen),
            }
        }
        true
    }

    /// Every event for `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Ok(v) = self
            .events
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    /// How many events of `kind` were seen.
    pub fn count(&self, kind: &str) -> usize {
        self.seen.iter().filter(|v| v["event"] == kind).count()
    }

    /// Waits for the exit and collects the remaining events.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<Value>) {
        let end = Instant::now() + timeout;
        let code = loop {
            if let Some(st) = self.child.0.try_wait().expect("wait") {
                break st.code();
            }
            assert!(
                Instant::now() < end,
                "watch did not exit; seen {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(v) = self.events.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(v);
        }
        (code, std::mem::take(&mut self.seen))
    }
}

/// Polls `probe` (every 20 ms) until it gives a value, within `timeout`;
/// panics saying `what` was not seen otherwise. For what a test must wait
/// for without an event to read: a file written, a thread blocked, a loop
/// ticking in the target's own registry.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < end, "not seen within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SIGTERM first: the watch ends cleanly; Kid kills it anyway.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.0.id() as i32),
            nix::sys::signal::SIGTERM,
        );
    }
}
