//! Harness of the `dump` tests: builds the C victims (`fixtures/c/`) and the
//! Rust one (`fx-deep-rust`), runs them, runs gdb, and compares stacks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a victim may take to print READY or answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The `aiodebug-watch` binary under test.
pub fn watch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aiodebug-watch"))
}

fn out_dir() -> PathBuf {
    let d = root().join("target/dump-fixtures");
    std::fs::create_dir_all(&d).expect("create target/dump-fixtures");
    d
}

/// Builds `fixtures/c/<name>.c` with `gcc -O2 -fomit-frame-pointer -g
/// -pthread` (once per test process) and returns the binary.
pub fn c_victim(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(name) {
        return p.clone();
    }
    let src = root().join("fixtures/c").join(format!("{name}.c"));
    let dst = out_dir().join(name);
    let tmp = out_dir().join(format!(".{name}.{}", std::process::id()));
    let out = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-pthread", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &dst).expect("install victim");
    map.insert(name.to_string(), dst.clone());
    dst
}

/// `stacks` with its debug info moved to a separate file found through
/// `.gnu_debuglink` (next to the binary), in a directory of its own.
pub fn c_victim_with_debuglink() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = out_dir().join(format!("debuglink-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create debuglink dir");
            let bin = dir.join("stacks-dl");
            std::fs::copy(c_victim("stacks"), &bin).expect("copy stacks");
            let run = |args: &[&str]| {
                let out = Command::new(args[0])
                    .args(&args[1..])
                    .current_dir(&dir)
                    .output()
                    .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
                assert!(
                    out.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(&[
                "objcopy",
                "--only-keep-debug",
                "stacks-dl",
                "stacks-dl.debug",
            ]);
            run(&["strip", "--strip-all", "stacks-dl"]);
            run(&[
                "objcopy",
                "--add-gnu-debuglink=stacks-dl.debug",
                "stacks-dl",
            ]);
            bin
        })
        .clone()
}

/// Builds `fx-deep-rust` with the `fixture` profile (release + debug info)
/// and returns a private copy of it.
pub fn rust_victim() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = root().join("target/fixtures");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(root())
                .args([
                    "build",
                    "--profile",
                    "fixture",
                    "-p",
                    "aiodebug-fixtures",
                    "--bin",
                    "fx-deep-rust",
                    "--target-dir",
                ])
                .arg(&target)
                .stdin(Stdio::null())
                .output()
                .expect("run cargo");
            assert!(
                out.status.success(),
                "building fx-deep-rust: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dst = out_dir().join("fx-deep-rust");
            let tmp = out_dir().join(format!(".fx-deep-rust.{}", std::process::id()));
            std::fs::copy(target.join("fixture/fx-deep-rust"), &tmp).expect("copy fx-deep-rust");
            std::fs::rename(&tmp, &dst).expect("install fx-deep-rust");
            dst
        })
        .clone()
}

/// A running victim; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Victim {
    /// The child.
    pub child: Child,
    /// Its pid.
    pub pid: i32,
    /// Its READY line.
    pub ready: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Victim {
    /// Starts `path` with `args` and waits for its READY line.
    pub fn spawn(path: &Path, args: &[&str]) -> Victim {
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()));
        let pid = child.id() as i32;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut v = Victim {
            child,
            pid,
            ready: String::new(),
            stdin,
            lines,
        };
        let ready = v
            .line()
            .unwrap_or_else(|| panic!("{} printed no READY", path.display()));
        assert!(
            ready.starts_with("READY "),
            "unexpected first line {ready:?}"
        );
        v.ready = ready;
        v
    }

    /// The next line printed, waiting up to [`TIMEOUT`].
    pub fn line(&mut self) -> Option<String> {
        self.line_within(TIMEOUT)
    }

    /// The next line printed within `t`.
    pub fn line_within(&mut self, t: Duration) -> Option<String> {
        match self.lines.recv_timeout(t) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Sends a command line.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write command");
        stdin.flush().expect("flush command");
    }

    /// Sends a command and returns the answer (within `t`).
    pub fn ask_within(&mut self, cmd: &str, t: Duration) -> Option<String> {
        self.send(cmd);
        self.line_within(t)
    }

    /// A `key=value` field of the READY line.
    pub fn field(&self, key: &str) -> Option<i32> {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `State:` letter of /proc/PID/status.
pub fn state(pid: i32) -> char {
    status_field(pid, "State:")
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

/// `TracerPid:` of /proc/PID/status.
pub fn tracer(pid: i32) -> i32 {
    status_field(pid, "TracerPid:")
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// Waits until `cond` holds (polling every ms), up to `t`.
pub fn wait_until(t: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// Runs `aiodebug-watch` with `args`.
pub fn watch(args: &[&str]) -> Output {
    Command::new(watch_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aiodebug-watch")
}

/// One frame as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFrame {
    /// The function name as printed.
    pub name: String,
    /// The comparison key ([`normalize`]).
    pub key: String,
}

/// Stacks of every thread (tid → frames, innermost first) from `dump --json`.
pub fn our_stacks(pid: i32) -> (serde_json::Value, HashMap<i32, Vec<NamedFrame>>) {
    let out = watch(&["dump", "--json", &pid.to_string()]);
    assert!(
        out.status.success(),
        "dump {pid} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 JSON");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    let mut stacks = HashMap::new();
    for t in v["threads"].as_array().expect("threads") {
        let tid = t["tid"].as_i64().expect("tid") as i32;
        let frames = t["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .map(|f| {
                let name = if f["kind"] == "signal-trampoline" {
                    "<signal handler called>".to_string()
                } else {
                    f["function"].as_str().unwrap_or("??").to_string()
                };
                NamedFrame {
                    key: normalize(&name),
                    name,
                }
            })
            .collect();
        stacks.insert(tid, frames);
    }
    (v, stacks)
}

/// Stacks of every thread from `gdb -batch -p PID -ex "set print
/// frame-arguments none" -ex "thread apply all bt"`.
pub fn gdb_stacks(pid: i32) -> HashMap<i32, Vec<NamedFrame>> {
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-p", &pid.to_string()])
        .args(["-ex", "set print frame-arguments none"])
        .args(["-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .output()
        .expect("run gdb (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_gdb(&text)
}

/// Parses gdb's `thread apply all bt`.
pub fn parse_gdb(text: &str) -> HashMap<i32, Vec<NamedFrame>> {
    let mut out: HashMap<i32, Vec<NamedFrame>> = HashMap::new();
    let mut current: Option<i32> = None;
    for line in text.lines() {
        if line.starts_with("Thread ") {
            current = line
                .split("(LWP ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|n| n.trim().parse().ok());
            if let Some(t) = current {
                out.entry(t).or_default();
            }
            continue;
        }
        let Some(tid) = current else { continue };
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some(name) = gdb_frame_name(rest) else {
            continue;
        };
        out.entry(tid).or_default().push(NamedFrame {
            key: normalize(&name),
            name,
        });
    }
    out
}

/// The function name of one gdb frame line (after `#`).
fn gdb_frame_name(rest: &str) -> Option<String> {
    let rest = rest
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    let rest = match rest.strip_prefix("0x") {
        Some(r) => r.split_once(" in ")?.1,
        None => rest,
    };
    if rest.starts_with("<signal handler called>") {
        return Some("<signal handler called>".to_string());
    }
    // Drop ` at FILE:LINE` / ` from LIB`, then the argument list `(...)`.
    let mut s = rest;
    for sep in [" at ", " from "] {
        if let Some(i) = s.rfind(sep) {
            if s[..i].ends_with(')') {
                s = &s[..i];
            }
        }
    }
    let s = s.trim_end();
    if !s.ends_with(')') {
        return Some(s.to_string());
    }
    let mut depth = 0i32;
    for (i, c) in s.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return Some(s[..i].trim_end().to_string());
                }
            }
            _ => {}
        }
    }
    Some(s.to_string())
}

/// The comparison key of a function name: gdb and addr2line spell Rust names
/// differently (`{closure#1}` / `{{closure}}`, `{impl#3}::f` / `<T as
/// Trait>::f`, generic arguments or not), so the key is the last path segment
/// that is not a closure, followed by the closures nested in it; C names are
/// kept whole.
pub fn normalize(name: &str) -> String {
    let mut s = name
        .replace("{{vtable.shim}}", "")
        .replace("{vtable.shim}", "");
    // Generic arguments and qualified-path brackets.
    let mut out = String::with_capacity(s.len());
    let mut depth = 0i32;
    let mut prev = ' ';
    for c in s.chars() {
        match c {
            '<' => depth += 1,
            // `->` of a function type is not a closing bracket.
            '>' if prev == '-' => {}
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
        prev = c;
    }
    s = out;
    let segments: Vec<String> = s
        .split("::")
        .filter(|seg| !seg.is_empty())
        .map(|seg| {
            if seg.starts_with("{closure") || seg.starts_with("{{closure") {
                "{closure}".to_string()
            } else {
                seg.trim().to_string()
            }
        })
        .collect();
    let Some(last_fn) = segments.iter().rposition(|s| s != "{closure}") else {
        return segments.join("::");
    };
    segments[last_fn..].join("::")
}

/// Compares our stacks with gdb's, thread by thread and frame by frame; a
/// readable report of every difference, empty when they agree. gdb stops at
/// `main` (its `backtrace past-main` is off): we may go on past it.
pub fn compare(
    ours: &HashMap<i32, Vec<NamedFrame>>,
    gdb: &HashMap<i32, Vec<NamedFrame>>,
) -> String {
    let mut report = String::new();
    let mut tids: Vec<_> = gdb.keys().copied().collect();
    tids.sort_unstable();
    for tid in tids {
        let g = &gdb[&tid];
        let Some(o) = ours.get(&tid) else {
            report.push_str(&format!("thread {tid}: missing from our dump\n"));
            continue;
        };
        let gdb_stops_at_main = g.last().is_some_and(|f| f.key == "main");
        let n = if gdb_stops_at_main && o.len() > g.len() {
            g.len()
        } else {
            o.len()
        };
        if n != g.len() {
            report.push_str(&format!(
                "thread {tid}: {} frames, gdb has {}\n",
                o.len(),
                g.len()
            ));
        }
        for (i, (a, b)) in o.iter().zip(g.iter()).enumerate().take(n) {
            if a.key != b.key {
                report.push_str(&format!(
                    "thread {tid} frame #{i}: ours {:?} ({:?}), gdb {:?} ({:?})\n",
                    a.name, a.key, b.name, b.key
                ));
            }
        }
    }
    report
}

/// A small deterministic pseudo-random sequence (xorshift).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock.
    pub fn from_clock() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t | 1)
    }

    /// The next number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
