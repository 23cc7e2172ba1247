//! Shared harness of the integration tests: builds the fixture programs of
//! `fixtures/` (once per test process and variant), spawns them and talks
//! their line protocol (see `fixtures/src/lib.rs`).
#![allow(dead_code)]

pub mod cbuild;
pub mod split;
pub mod watcher;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How long a fixture may take to print READY or answer a command.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Every fixture program.
pub const ALL_BINS: &[&str] = &[
    "fx-tokio-current",
    "fx-tokio-multi",
    "fx-thread-loop",
    "fx-no-heartbeat",
    "fx-garbage",
    "fx-dlopen-host",
    "fx-tokio-plain",
];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// Holds a test binary's tests to one at a time: the guard of one lock per
/// test binary (a lock poisoned by a failed test is taken anyway).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/fixtures/tokio-service/release/`, after `cargo build --release
/// --locked` of the fixture (a default `#[tokio::main]` axum service) with
/// RUSTFLAGS removed from the environment: as a service author builds it.
/// Built once per test process.
pub fn tokio_service_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = workspace_root().join("target/fixtures/tokio-service");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root().join("fixtures/tokio-service"))
            .args(["build", "--release", "--locked", "--target-dir"])
            .arg(&target)
            // As a service author builds: no flags from our environment.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build for fixtures/tokio-service");
        assert!(
            out.status.success(),
            "building fixtures/tokio-service failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("release")
    })
}

/// The `aiodebug-watch` binary under test.
pub fn watch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aiodebug-watch"))
}

/// How a fixture binary was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The `fixture` profile as is (PIE, full debug info, symbols).
    Pie,
    /// Built with `-C relocation-model=static`: an ET_EXEC at a fixed address.
    NoPie,
    /// [`Variant::Pie`] after `strip --strip-all`.
    PieStripped,
    /// [`Variant::NoPie`] after `strip --strip-all`.
    NoPieStripped,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 4] = [
        Variant::Pie,
        Variant::NoPie,
        Variant::PieStripped,
        Variant::NoPieStripped,
    ];

    /// The directory name under `target/fixtures/bin/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Variant::Pie => "pie",
            Variant::NoPie => "nopie",
            Variant::PieStripped => "pie-stripped",
            Variant::NoPieStripped => "nopie-stripped",
        }
    }

    /// Whether the binary keeps its symbols and debug info.
    pub fn has_symbols(self) -> bool {
        matches!(self, Variant::Pie | Variant::NoPie)
    }

    /// Whether the binary is position independent (ET_DYN).
    pub fn is_pie(self) -> bool {
        matches!(self, Variant::Pie | Variant::PieStripped)
    }
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn fixtures_target() -> PathBuf {
    workspace_root().join("target/fixtures")
}

/// Held for writing while this process has a file open for writing that it
/// will execute, and for reading while it spawns a child: a child forked in
/// between would inherit the write descriptor and make exec fail with ETXTBSY.
static EXEC_GUARD: RwLock<()> = RwLock::new(());

/// Runs a build command; on failure forwards its output and panics.
fn run_build(mut cmd: Command, what: &str) {
    let started = Instant::now();
    eprintln!("support: building {what}: {cmd:?}");
    let out = {
        let _g = EXEC_GUARD.read().unwrap_or_else(|e| e.into_inner());
        cmd.stdin(Stdio::null()).output()
    }
    .unwrap_or_else(|e| panic!("support: cannot run {cmd:?} to build {what}: {e}"));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!(
            "support: building {what} failed ({}): {cmd:?} (its output is above)",
            out.status
        );
    }
    eprintln!(
        "support: built {what} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `cargo build --profile fixture` of every fixture and the plugin library,
/// once per process; returns the profile's output directory.
fn pie_build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = fixtures_target();
        let mut cmd = Command::new(cargo());
        cmd.current_dir(workspace_root())
            .args([
                "build",
                "--profile",
                "fixture",
                "-p",
                "aiodebug-fixtures",
                "-p",
                "aiodebug-fixture-lib",
                "--target-dir",
            ])
            .arg(&target);
        run_build(cmd, "the fixtures");
        target.join("fixture")
    })
}

/// `cargo rustc ... -C relocation-model=static` of one bin (the caller
/// caches); returns the built (not yet copied) file.
fn nopie_build(bin: &str) -> PathBuf {
    let target = workspace_root().join("target/fixtures-nopie");
    let out = target.join("fixture").join(bin);
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root())
        .args([
            "rustc",
            "--profile",
            "fixture",
            "-p",
            "aiodebug-fixtures",
            "--bin",
            bin,
            "--target-dir",
        ])
        .arg(&target)
        .args(["--", "-C", "relocation-model=static"]);
    run_build(cmd, &format!("{bin} (non-PIE)"));
    let ty = elf_type(&out);
    assert_eq!(
        ty,
        ET_EXEC,
        "support: {} should be a non-PIE executable (ET_EXEC = 2), e_type is {ty}",
        out.display()
    );
    out
}

/// ELF `e_type` of an executable file.
pub const ET_EXEC: u16 = 2;
/// ELF `e_type` of a shared object or PIE.
pub const ET_DYN: u16 = 3;

/// The ELF `e_type` of `path`.
pub fn elf_type(path: &Path) -> u16 {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("support: read {}: {e}", path.display()));
    assert!(
        bytes.len() > 18 && bytes.starts_with(b"\x7fELF"),
        "support: {} is not an ELF file",
        path.display()
    );
    u16::from_le_bytes([bytes[16], bytes[17]])
}

/// Copies `src` to `dst` atomically (temporary file, then rename), so that a
/// fixture being executed from `dst` by another test process is never
/// written to. With `strip`, the copy is made by `strip --strip-all -o`.
fn install(src: &Path, dst: &Path, strip: bool) {
    let dir = dst.parent().expect("install target has a parent");
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("support: create {}: {e}", dir.display()));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dst.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    if strip {
        let mut cmd = Command::new("strip");
        cmd.arg("--strip-all").arg("-o").arg(&tmp).arg(src);
        run_build(cmd, &format!("stripped {}", dst.display()));
    } else {
        let _g = EXEC_GUARD.write().unwrap_or_else(|e| e.into_inner());
        std::fs::copy(src, &tmp).unwrap_or_else(|e| {
            panic!("support: copy {} to {}: {e}", src.display(), tmp.display())
        });
    }
    std::fs::rename(&tmp, dst).unwrap_or_else(|e| {
        panic!(
            "support: rename {} to {}: {e}",
            tmp.display(),
            dst.display()
        )
    });
}

/// The path of fixture `bin` built as `v`, building it first if this process
/// has not yet. Variants live in `target/fixtures/bin/<variant>/<bin>`.
pub fn fixture_path(bin: &str, v: Variant) -> PathBuf {
    static DONE: Mutex<Option<HashMap<(String, Variant), PathBuf>>> = Mutex::new(None);
    assert!(
        ALL_BINS.contains(&bin),
        "support: unknown fixture {bin:?} (known: {ALL_BINS:?})"
    );
    // Held while building: one build at a time (they would queue on cargo's
    // lock anyway), and no variant is built twice.
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    variant_path(done.get_or_insert_with(HashMap::new), bin, v)
}

fn variant_path(done: &mut HashMap<(String, Variant), PathBuf>, bin: &str, v: Variant) -> PathBuf {
    if let Some(p) = done.get(&(bin.to_string(), v)) {
        return p.clone();
    }
    let dst = fixtures_target().join("bin").join(v.dir_name()).join(bin);
    match v {
        Variant::Pie => install(&pie_build_dir().join(bin), &dst, false),
        Variant::PieStripped => install(&variant_path(done, bin, Variant::Pie), &dst, true),
        Variant::NoPie => install(&nopie_build(bin), &dst, false),
        Variant::NoPieStripped => install(&variant_path(done, bin, Variant::NoPie), &dst, true),
    }
    done.insert((bin.to_string(), v), dst.clone());
    dst
}

/// The plugin library `fx-dlopen-host` loads (built with the fixtures, copied
/// to `target/fixtures/bin/pie/`).
pub fn fixture_lib_path() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let name = "libaiodebug_fixture_lib.so";
        let dst = fixtures_target().join("bin/pie").join(name);
        install(&pie_build_dir().join(name), &dst, false);
        dst
    })
    .clone()
}

/// Number of threads of process `pid` (`Threads:` of /proc/PID/status).
pub fn proc_threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("support: read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("support: no Threads: line in /proc/{pid}/status"))
}

/// Thread ids of process `pid` with their names (`/proc/PID/task/*/comm`).
pub fn proc_tasks(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        out.push((tid, comm.trim_end().to_string()));
    }
    out.sort();
    out
}

/// A running fixture program; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Fixture {
    /// The child process (stdin and stdout are taken by the fixture).
    pub child: Child,
    /// Its pid.
    pub pid: i32,
    /// The READY line it printed.
    pub ready: String,
    /// The binary it runs.
    pub path: PathBuf,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Fixture {
    /// Starts fixture `bin` built as `v` with `args` and waits (up to
    /// [`TIMEOUT`]) for its READY line. `fx-dlopen-host` without arguments
    /// gets [`fixture_lib_path`].
    pub fn spawn(bin: &str, v: Variant, args: &[&str]) -> Fixture {
        let path = fixture_path(bin, v);
        let mut owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if bin == "fx-dlopen-host" && owned.is_empty() {
            owned.push(fixture_lib_path().to_string_lossy().into_owned());
        }
        Self::spawn_path(&path, &owned)
    }

    /// Starts the program at `path` (speaking the fixture protocol).
    pub fn spawn_path(path: &Path, args: &[String]) -> Fixture {
        let mut cmd = Command::new(path);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn_retrying(&mut cmd);
        let pid = child.id() as i32;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("fixture-{pid}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the fixture's stdout reader");
        let mut fx = Fixture {
            child,
            pid,
            ready: String::new(),
            path: path.to_path_buf(),
            stdin,
            lines,
        };
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match fx.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("READY ") => {
                    fx.ready = line;
                    break;
                }
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "support: {} {args:?} printed no READY within {TIMEOUT:?}; stdout so far: {seen:#?}",
                    path.display()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = fx.child.wait();
                    panic!(
                        "support: {} {args:?} exited ({status:?}) before READY; stdout: {seen:#?} (stderr is above)",
                        path.display()
                    )
                }
            }
        }
        let announced = fx.ready_field("pid");
        assert_eq!(
            announced.as_deref(),
            Some(pid.to_string().as_str()),
            "support: READY line {:?} names another pid than {pid}",
            fx.ready
        );
        fx
    }

    /// A `key=value` field of the READY line.
    pub fn ready_field(&self, key: &str) -> Option<String> {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }

    /// The `kind=` of the READY line.
    pub fn kind(&self) -> String {
        self.ready_field("kind").unwrap_or_default()
    }

    /// The loops the READY line announced (empty for `loops=-`).
    pub fn loops(&self) -> Vec<String> {
        match self.ready_field("loops").as_deref() {
            None | Some("-") | Some("") => Vec::new(),
            Some(l) => l.split(',').map(str::to_string).collect(),
        }
    }

    /// Sends one command line and returns the answer line (`OK...` or
    /// `ERR ...`); panics if none comes within [`TIMEOUT`].
    pub fn send(&mut self, cmd: &str) -> String {
        let stdin = self.stdin.as_mut().expect("fixture stdin is open");
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()) {
            panic!("support: write {cmd:?} to fixture {}: {e}", self.pid);
        }
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "support: fixture {} did not answer {cmd:?} within {TIMEOUT:?}",
                    self.pid
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait();
                panic!(
                    "support: fixture {} closed stdout instead of answering {cmd:?} (status {status:?})",
                    self.pid
                )
            }
        }
    }

    /// [`Fixture::send`], asserting the answer starts with `OK`.
    pub fn ok(&mut self, cmd: &str) -> String {
        let answer = self.send(cmd);
        assert!(
            answer.starts_with("OK"),
            "support: fixture {} answered {cmd:?} with {answer:?}",
            self.pid
        );
        answer
    }

    /// Number of threads of the fixture now.
    pub fn threads(&self) -> usize {
        proc_threads(self.pid)
    }

    /// Closes the fixture's stdin (it exits on EOF) and waits up to `timeout`
    /// for it to exit by itself; None if it did not (it is killed on drop).
    pub fn close_stdin_and_wait(mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the fixture to exit and returns its exit status.
    pub fn exit(mut self) -> ExitStatus {
        let answer = self.send("exit");
        assert!(answer.starts_with("OK"), "exit answered {answer:?}");
        self.stdin = None;
        self.child.wait().expect("wait for the fixture")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd`, retrying briefly on ETXTBSY (a binary another process just
/// finished writing).
fn spawn_retrying(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        let res = {
            let _g = EXEC_GUARD.read().unwrap_or_else(|e| e.into_inner());
            cmd.spawn()
        };
        match res {
            Ok(c) => return c,
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("support: spawn {cmd:?}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// A naive ground-truth reader of heartbeat registries, for checking fixtures
// (no tearing protection: read a stable registry, or tolerate noise).

fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}
fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Address (link-time, before load bias) and size of the `aiodebug_hb`
/// section of the ELF file `path`, from its section headers.
pub fn hb_section(path: &Path) -> Option<(u64, u64)> {
    let b = std::fs::read(path).ok()?;
    if !b.starts_with(b"\x7fELF") || b.len() < 64 {
        return None;
    }
    let shoff = le_u64(&b, 0x28) as usize;
    let shentsize = le_u16(&b, 0x3A) as usize;
    let shnum = le_u16(&b, 0x3C) as usize;
    let shstrndx = le_u16(&b, 0x3E) as usize;
    let sh =
        |i: usize| -> Option<&[u8]> { b.get(shoff + i * shentsize..shoff + (i + 1) * shentsize) };
    let strtab = sh(shstrndx)?;
    let str_off = le_u64(strtab, 0x18) as usize;
    for i in 0..shnum {
        let h = sh(i)?;
        let name_off = str_off + le_u32(h, 0) as usize;
        let name = b.get(name_off..)?.split(|&c| c == 0).next()?;
        if name == b"aiodebug_hb" {
            return Some((le_u64(h, 0x10), le_u64(h, 0x20)));
        }
    }
    None
}

/// Where `elf` (an ET_DYN) is loaded in process `pid`: the start of its
/// mapping at file offset 0.
pub fn load_base(pid: i32, elf: &Path) -> Option<u64> {
    let want = elf.canonicalize().unwrap_or_else(|_| elf.to_path_buf());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = f.next()?;
        let _dev = f.next()?;
        let _inode = f.next()?;
        let path: String = f.collect::<Vec<_>>().join(" ");
        let path = path.strip_suffix(" (deleted)").unwrap_or(&path);
        (u64::from_str_radix(offset, 16).ok()? == 0 && Path::new(path) == want)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}

/// A copy of the `aiodebug_hb` section of `elf` as loaded in process `pid`
/// (through /proc/PID/mem), or None if `elf` has no such section or is not
/// mapped.
pub fn read_hb(pid: i32, elf: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let (addr, size) = hb_section(elf)?;
    let bias = if elf_type(elf) == ET_EXEC {
        0
    } else {
        load_base(pid, elf)?
    };
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; size as usize];
    mem.read_exact_at(&mut buf, bias + addr).ok()?;
    Some(buf)
}

/// A live slot of a registry, as [`hb_slots`] saw it.
#[derive(Debug, Clone)]
pub struct HbSlot {
    pub index: usize,
    /// The name, lossily decoded.
    pub name: String,
    pub ticks: u64,
    pub tid: u32,
    pub period_ns: u64,
    pub last_tick_ns: u64,
    /// Ring entries `(tag, lag_ns)` by index.
    pub ring: Vec<(u64, u64)>,
}

/// The live slots (in_use 1, even gen) of every registry in `section` whose
/// header is exactly this version's (abi 1, 64, 1152, ring 64, name cap 64)
/// and fits in the section.
pub fn hb_slots(section: &[u8]) -> Vec<HbSlot> {
    const MAGIC: u64 = u64::from_le_bytes(*b"AIODBGHB");
    let mut out = Vec::new();
    let mut off = 0;
    while off + 64 <= section.len() {
        let h = &section[off..];
        let valid = le_u64(h, 0) == MAGIC
            && le_u16(h, 8) == 1
            && le_u32(h, 12) == 64
            && le_u32(h, 16) == 1152
            && le_u32(h, 24) == 64
            && le_u32(h, 28) == 64;
        let count = le_u32(h, 20) as usize;
        if !valid || count > 4096 || off + 64 + count * 1152 > section.len() {
            off += 64;
            continue;
        }
        for i in 0..count {
            let s = &section[off + 64 + i * 1152..off + 64 + (i + 1) * 1152];
            if le_u32(s, 8) != 1 || le_u64(s, 0) % 2 != 0 {
                continue;
            }
            let len = (le_u32(s, 12) as usize).min(64);
            out.push(HbSlot {
                index: i,
                name: String::from_utf8_lossy(&s[64..64 + len]).into_owned(),
                ticks: le_u64(s, 32),
                tid: le_u32(s, 24),
                period_ns: le_u64(s, 16),
                last_tick_ns: le_u64(s, 40),
                ring: (0..64)
                    .map(|e| (le_u64(s, 128 + e * 16), le_u64(s, 136 + e * 16)))
                    .collect(),
            });
        }
        off += 64 + count * 1152;
    }
    out
}

impl Fixture {
    /// The live heartbeat slots of the fixture's own binary (or, for
    /// `fx-dlopen-host`, pass the library as `elf`).
    pub fn hb_slots_of(&self, elf: &Path) -> Vec<HbSlot> {
        read_hb(self.pid, elf)
            .map(|s| hb_slots(&s))
            .unwrap_or_default()
    }

    /// The tick count of the live slot named `name` in `elf`'s registry.
    pub fn ticks_of(&self, elf: &Path, name: &str) -> Option<u64> {
        self.hb_slots_of(elf)
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.ticks)
    }
}

/// A directory under the system temp dir, removed with everything in it
/// when dropped: also when the test fails (the panic unwinds through it).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty `aiodebug-<tag>-<pid>-<n>` directory.
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("aiodebug-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create a temporary directory");
        TempDir(d)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads `aiodebug-watch --json` output line by line on a thread of its own:
/// one parsed event per line on the returned channel (a line that is not
/// JSON fails the test).
pub fn json_events(out: std::process::ChildStdout) -> Receiver<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch printed non-JSON {line:?}: {e}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}
