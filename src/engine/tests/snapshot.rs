//! The snapshot is self-contained: recorded from a live C fixture (built with
//! GNU ld and with lld), then the fixture is killed and its binary deleted,
//! and the snapshot is unwound and symbolized to the same frames as a live
//! dump of the same process.

mod support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aiodebug_engine::attach::{snapshot, SnapshotOptions};
use aiodebug_engine::dump::{Dump, Dumper};
use aiodebug_engine::module::TargetFiles;
use support::{Reaped, TempDir};

fn fixture_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/c/stacks.c")
}

/// `gcc -fuse-ld=lld` through the toolchain's own lld, if there is one.
fn lld_dir() -> Option<PathBuf> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let root = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let dir = root.join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld");
    dir.join("ld.lld").exists().then_some(dir)
}

fn build(dir: &Path, lld: Option<&Path>) -> PathBuf {
    let out = dir.join("stacks");
    let mut flags: Vec<&OsStr> = ["-O2", "-g", "-fomit-frame-pointer", "-pthread"]
        .map(OsStr::new)
        .to_vec();
    if let Some(l) = lld {
        flags.extend([OsStr::new("-fuse-ld=lld"), OsStr::new("-B"), l.as_os_str()]);
    }
    support::gcc(&flags, &fixture_source(), &out);
    out
}

fn spawn(exe: &Path) -> (Reaped, i32) {
    let mut child = Command::new(exe)
        .arg("40")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fixture");
    let stdout = child.stdout.take().expect("stdout");
    let child = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("READY");
    assert!(line.starts_with("READY pid="), "{line:?}");
    let pid = child.0.id() as i32;
    // Past READY, every thread is in its blocking read (the fixture says so
    // only once they all are); let the last one enter the kernel.
    std::thread::sleep(std::time::Duration::from_millis(50));
    (child, pid)
}

/// Every thread's frames as text, threads in a stable order (by name, the
/// main thread told apart, then by frames): function, file:line, and with
/// `exact` the address and module offset too (which differ between two
/// processes of one build: ASLR).
fn listing(d: &Dump, exact: bool) -> Vec<Vec<String>> {
    let mut v: Vec<(String, Vec<String>)> = d
        .threads
        .iter()
        .map(|t| {
            let f = t
                .frames
                .iter()
                .map(|f| {
                    let source = format!(
                        "{} {}:{}",
                        f.function.as_deref().unwrap_or("?"),
                        f.file.as_deref().unwrap_or("?"),
                        f.line.unwrap_or(0)
                    );
                    match exact {
                        true => format!(
                            "{:x} {source} {}+{:x?}",
                            f.address,
                            f.module.as_deref().unwrap_or("?"),
                            f.module_offset
                        ),
                        false => source,
                    }
                })
                .collect();
            (format!("{} {}", t.name, t.tid == d.pid), f)
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, f)| f).collect()
}

fn recorded_snapshot_symbolizes_after_the_target_is_gone(lld: Option<&Path>) {
    let dir = TempDir::new("snapshot", if lld.is_some() { "lld" } else { "bfd" });
    let exe = build(&dir.0, lld);
    let (mut child, pid) = spawn(&exe);

    let live = Dumper::new().dump(pid, None).expect("live dump");
    let snap = snapshot(pid, &SnapshotOptions::default()).expect("snapshot");
    assert!(
        snap.modules
            .modules
            .iter()
            .any(|m| m.name == "[vdso]" && m.image.is_some()),
        "the vDSO image is in the snapshot"
    );
    let own = snap
        .modules
        .modules
        .iter()
        .find(|m| m.path.as_deref() == Some(exe.as_path()))
        .expect("the fixture's module");
    assert!(own.build_id.is_some(), "gcc links with a build-id");

    // Gone: killed, reaped, its binary deleted.
    let _ = child.0.kill();
    let _ = child.0.wait();
    std::fs::remove_file(&exe).expect("delete the binary");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // A new dumper: nothing cached from the live dump.
    let offline = Dumper::new().process(&snap, None);
    assert!(
        offline.module_problems.is_empty(),
        "{:?}",
        offline.module_problems
    );
    assert_eq!(listing(&offline, true), listing(&live, true));
    for (a, b) in live.threads.iter().zip(&offline.threads) {
        assert_eq!(a.end, b.end, "thread {}", a.tid);
    }
    // Not vacuous: the fixture's functions are named, with file:line.
    let all: Vec<&str> = offline
        .threads
        .iter()
        .flat_map(|t| t.frames.iter())
        .filter(|f| f.file.as_deref().is_some_and(|p| p.ends_with("stacks.c")))
        .filter_map(|f| f.function.as_deref())
        .collect();
    for want in ["park_forever", "main"] {
        assert!(all.contains(&want), "{want} in {all:?}");
    }
}

#[test]
fn snapshot_of_a_gnu_ld_fixture_symbolizes_offline() {
    recorded_snapshot_symbolizes_after_the_target_is_gone(None);
}

#[test]
fn snapshot_of_an_lld_fixture_symbolizes_offline() {
    match lld_dir() {
        Some(dir) => recorded_snapshot_symbolizes_after_the_target_is_gone(Some(&dir)),
        None => eprintln!("no ld.lld in the toolchain: skipped"),
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run a binutils tool");
    assert!(status.success(), "{cmd:?} failed");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A stripped binary, its debug file only in a debug directory given to the
/// offline stage (by build-id): the snapshot, symbolized after the process
/// is gone, names the same functions and file:line as a live dump of the
/// unstripped build.
#[test]
fn stripped_snapshot_symbolizes_with_a_debug_dir() {
    let dir = TempDir::new("snapshot", "strip");
    let full = build(&dir.0, None);
    let (_live_child, live_pid) = spawn(&full);
    let live = Dumper::new().dump(live_pid, None).expect("live dump");

    let stripped = dir.0.join("stacks-stripped");
    let debug = dir.0.join("stacks.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&debug));
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg("--strip-unneeded")
        .arg(&full)
        .arg(&stripped));
    let (mut child, pid) = spawn(&stripped);
    let snap = snapshot(pid, &SnapshotOptions::default()).expect("snapshot");
    let id = snap
        .modules
        .modules
        .iter()
        .find(|m| m.path.as_deref() == Some(stripped.as_path()))
        .and_then(|m| m.build_id.clone())
        .expect("build-id of the stripped module");
    let _ = child.0.kill();
    let _ = child.0.wait();

    // Without the debug directory: the fixture's frames have no file:line.
    let bare = Dumper::new().process(&snap, None);
    assert!(!bare
        .threads
        .iter()
        .flat_map(|t| t.frames.iter())
        .any(|f| f.file.as_deref().is_some_and(|p| p.ends_with("stacks.c"))));

    let debug_dir = dir.0.join("debug");
    let h = hex(&id);
    let at = debug_dir.join(".build-id").join(&h[..2]);
    std::fs::create_dir_all(&at).expect("build-id dir");
    std::fs::rename(&debug, at.join(format!("{}.debug", &h[2..]))).expect("place debug file");
    let mut files: TargetFiles = snap.files.clone();
    files.debug_dirs.push(debug_dir);
    let offline = Dumper::new().process_with(&snap, None, &files);
    assert_eq!(listing(&offline, false), listing(&live, false));
    assert!(offline
        .threads
        .iter()
        .flat_map(|t| t.frames.iter())
        .any(|f| f.function.as_deref() == Some("park_forever")
            && f.file.as_deref().is_some_and(|p| p.ends_with("stacks.c"))));
}
