//! Minidumps: `dump --save`, `watch --save-minidumps`, `symbolize`.
//!
//! The C fixture `fixtures/c/stacks.c` (split into a stripped binary and its
//! `.debug` file by `support::split`) is dumped live; its minidump is
//! symbolized after the process is gone, and after its binary is deleted
//! (another host: only the `.debug` file, laid out by build-id, is left),
//! and compared with a live dump of the unstripped build; rust-minidump's
//! `minidump-stackwalk` reads the file too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::split::{place_by_build_id, split_keeping_full};
use support::{watch_bin, Fixture, TempDir, Variant};

/// `aiodebug-watch ARGS` with debuginfod switched off.
fn watch(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(watch_bin())
        .args(args)
        .env_remove("DEBUGINFOD_URLS")
        .output()
        .expect("run aiodebug-watch")
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// `dump PID --json [--save FILE]`.
fn dump(pid: i32, save: Option<&Path>) -> Value {
    let pid = pid.to_string();
    let mut args = vec![os("dump"), os(&pid), os("--json")];
    if let Some(f) = save {
        args.extend([os("--save"), f.as_os_str()]);
    }
    json_of(&watch(&args))
}

/// `symbolize FILE --json [--debug-dir DIR]`.
fn symbolize(file: &Path, debug_dir: Option<&Path>) -> Value {
    let mut args = vec![os("symbolize"), file.as_os_str(), os("--json")];
    if let Some(d) = debug_dir {
        args.extend([os("--debug-dir"), d.as_os_str()]);
    }
    json_of(&watch(&args))
}

/// Each thread's frames as (kind, function, file, line), in dump order.
fn frames(d: &Value) -> Vec<Vec<(String, Value, Value, Value)>> {
    d["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .map(|t| {
            t["frames"]
                .as_array()
                .expect("frames")
                .iter()
                .map(|f| {
                    (
                        f["kind"].as_str().unwrap_or("").to_string(),
                        f["function"].clone(),
                        f["file"].clone(),
                        f["line"].clone(),
                    )
                })
                .collect()
        })
        .collect()
}

fn spawn(exe: &Path) -> Fixture {
    let fx = Fixture::spawn_path(exe, &["8".to_string()]);
    // Past READY every thread is in its read; let the last enter the kernel.
    std::thread::sleep(Duration::from_millis(50));
    fx
}

/// Whether frames of `d` name `park_forever` at stacks.c:LINE.
fn names_park_forever(d: &Value) -> bool {
    d["threads"].as_array().into_iter().flatten().any(|t| {
        t["frames"].as_array().into_iter().flatten().any(|f| {
            f["function"] == "park_forever"
                && f["file"].as_str().is_some_and(|p| p.ends_with("stacks.c"))
                && f["line"].as_u64().is_some_and(|l| l > 0)
        })
    })
}

#[test]
fn a_stripped_build_saved_then_symbolized_elsewhere_matches_the_unstripped_live_dump() {
    let dir = TempDir::new("minidump-split");
    let (s, full) = split_keeping_full(&dir, &[]);
    let live = {
        let fx = spawn(&full);
        dump(fx.pid, None)
    };
    assert!(names_park_forever(&live), "{live}");

    let dmp = dir.join("stripped.dmp");
    let stripped_live = {
        let fx = spawn(&s.stripped);
        dump(fx.pid, Some(&dmp))
        // The fixture is killed here: what follows reads the file alone.
    };
    assert!(!names_park_forever(&stripped_live), "stripped: no names");
    assert!(dmp.is_file());

    // Without debug files the file renders what the live dump said.
    let bare = symbolize(&dmp, None);
    assert_eq!(frames(&bare), frames(&stripped_live));
    assert_eq!(bare["pid"], stripped_live["pid"]);
    assert_eq!(bare["freeze_ms"], stripped_live["freeze_ms"]);
    for (a, b) in bare["threads"]
        .as_array()
        .unwrap()
        .iter()
        .zip(stripped_live["threads"].as_array().unwrap())
    {
        for k in [
            "tid",
            "name",
            "state",
            "stop",
            "cause",
            "end",
            "stack_bytes",
        ] {
            assert_eq!(a[k], b[k], "{k} of thread {}", b["tid"]);
        }
    }

    // With the .debug file by build-id: the unstripped build's frames.
    let by_id = dir.join("by-id");
    place_by_build_id(&by_id, &s.debug, &s.build_id);
    let want = frames(&live);
    assert_eq!(want.len(), 4, "main, deep, inline, sighand");
    assert_eq!(frames(&symbolize(&dmp, Some(&by_id))), want);

    // The same file without our stream (what another writer gives): the
    // threads are unwound again offline, from the saved registers and
    // stacks with the modules' CFI, to the same frames.
    let foreign = dir.join("foreign.dmp");
    std::fs::write(&foreign, without_our_stream(&std::fs::read(&dmp).unwrap())).unwrap();
    assert_eq!(frames(&symbolize(&foreign, Some(&by_id))), want);

    // Another host: the binary is gone, only the .debug file is left (its
    // .eh_frame is NOBITS: the recorded unwinding carries the frames).
    std::fs::remove_file(&s.stripped).expect("remove the stripped binary");
    std::fs::remove_file(&s.debug).expect("remove the loose debug file");
    assert_eq!(frames(&symbolize(&dmp, Some(&by_id))), want);
}

/// `file` with the aiodebug stream (the last, as we write it) dropped
/// from the stream directory.
fn without_our_stream(file: &[u8]) -> Vec<u8> {
    let mut v = file.to_vec();
    let n = u32::from_le_bytes(v[8..12].try_into().unwrap());
    let dir = u32::from_le_bytes(v[12..16].try_into().unwrap()) as usize;
    let last = dir + 12 * (n as usize - 1);
    assert_eq!(&v[last..last + 4], &0x4149_4401u32.to_le_bytes());
    v[8..12].copy_from_slice(&(n - 1).to_le_bytes());
    v
}

#[test]
fn save_refuses_an_existing_file_and_a_symlink() {
    let dir = TempDir::new("minidump-save");
    let (s, _full) = split_keeping_full(&dir, &[]);
    let fx = spawn(&s.stripped);
    let pid = fx.pid.to_string();
    let taken = dir.join("taken.dmp");
    std::fs::write(&taken, b"mine").unwrap();
    let link = dir.join("link.dmp");
    std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
    for (f, why) in [(&taken, "it exists"), (&link, "symbolic link")] {
        let out = watch(&[os("dump"), os(&pid), os("--save"), f.as_os_str()]);
        assert_eq!(out.status.code(), Some(6));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why) && !err.contains("--force"), "{err}");
        assert!(out.stdout.is_empty(), "refused before the dump");
    }
    assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
    assert!(!dir.join("elsewhere").exists());
}

/// `symbolize` of `file`: exit code and stderr.
fn symbolize_fails(file: &Path) -> (Option<i32>, String) {
    let out = watch(&[os("symbolize"), file.as_os_str()]);
    assert!(out.stdout.is_empty(), "nothing on stdout");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_corrupt_and_truncated_files_exit_7_with_a_reason() {
    let dir = TempDir::new("minidump-corrupt");
    let (s, _full) = split_keeping_full(&dir, &[]);
    let good = dir.join("good.dmp");
    {
        let fx = spawn(&s.stripped);
        dump(fx.pid, Some(&good));
    }
    let bytes = std::fs::read(&good).expect("read the minidump");
    let (code, err) = symbolize_fails(&dir.join("missing.dmp"));
    assert_eq!(code, Some(7));
    assert!(err.contains("missing.dmp: cannot read it"), "{err}");
    let (code, err) = symbolize_fails(&dir);
    assert_eq!(code, Some(7), "a directory: {err}");

    let bad = dir.join("bad.dmp");
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "shorter than a minidump header"),
        (
            b"not a minidump at all, just text, long enough".to_vec(),
            "no MDMP signature",
        ),
    ];
    for cut in [31, 32, 100, bytes.len() / 2, bytes.len() - 1] {
        cases.push((bytes[..cut].to_vec(), "not a usable minidump"));
    }
    let mut huge_count = bytes.clone();
    huge_count[8..12].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    cases.push((huge_count, "streams listed"));
    for (content, want) in cases {
        std::fs::write(&bad, &content).unwrap();
        let (code, err) = symbolize_fails(&bad);
        assert_eq!(code, Some(7), "{} bytes: {err}", content.len());
        assert!(
            err.contains(want),
            "{} bytes: want {want:?}: {err}",
            content.len()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A child process killed and reaped when dropped (also when a test fails).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_save_minidumps_writes_one_beside_each_text_file() {
    let mut fx = Fixture::spawn("fx-thread-loop", Variant::Pie, &[]);
    let dir = TempDir::new("minidump-watch");
    let pid = fx.pid.to_string();
    let mut child = Reaped(
        Command::new(watch_bin())
            .args([
                "watch",
                &pid,
                "--json",
                "--exit-on-hang",
                "--dump-gap",
                "0.3",
            ])
            .arg("--save-minidumps")
            .arg("--output-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start watch"),
    );
    let events = support::json_events(child.0.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    loop {
        match events.recv_timeout(Duration::from_secs(20)) {
            Ok(v) if v["event"] == "loop_found" => break,
            Ok(v) => seen.push(v),
            Err(_) => panic!("no loop_found event; seen {seen:#?}"),
        }
    }
    fx.ok("block ticker 2000");
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < end, "watch did not exit on the hang");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let names = |ext: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("read the output directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    };
    let texts = names("txt");
    let dmps = names("dmp");
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(
        dmps,
        texts
            .iter()
            .map(|t| t.with_extension("dmp"))
            .collect::<Vec<_>>()
    );
    for (t, d) in texts.iter().zip(&dmps) {
        let text = std::fs::read_to_string(t).expect("read the text file");
        let v = symbolize(d, None);
        let threads = v["threads"].as_array().expect("threads");
        let lp = threads
            .iter()
            .find(|t| t["event_loop"] == "ticker")
            .unwrap_or_else(|| panic!("the loop's thread is named in {v}"));
        let named: Vec<&str> = lp["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        assert!(!named.is_empty(), "{lp}");
        for f in named {
            assert!(text.contains(f), "{f} in {}", t.display());
        }
        assert!(lp["cause"].is_object(), "the loop's cause is kept: {lp}");
    }
}

/// rust-minidump's `minidump-stackwalk`, installed once under
/// `target/tools` (kept there: the next run finds it; scripts/test installs
/// the same version before the tests).
fn stackwalk() -> PathBuf {
    let root = support::workspace_root().join("target/tools");
    let bin = root.join("bin/minidump-stackwalk");
    if !bin.exists() {
        let start = Instant::now();
        let out = Command::new(support::cbuild::cargo())
            .args([
                "install",
                "minidump-stackwalk",
                "--version",
                "0.27.0",
                "--locked",
                "--root",
            ])
            .arg(&root)
            .output()
            .expect("run cargo install");
        assert!(
            out.status.success(),
            "cargo install minidump-stackwalk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("installed minidump-stackwalk in {:?}", start.elapsed());
    }
    bin
}

#[test]
fn minidump_stackwalk_reads_our_file_and_unwinds_every_thread_as_we_do() {
    let tool = stackwalk();
    let dir = TempDir::new("minidump-stackwalk");
    let (_s, full) = split_keeping_full(&dir, &[]);
    let dmp = dir.join("full.dmp");
    let ours = {
        let fx = spawn(&full);
        dump(fx.pid, Some(&dmp))
    };
    let out = Command::new(&tool)
        .arg("--json")
        .arg("--use-local-debuginfo")
        .arg(&dmp)
        .output()
        .expect("run minidump-stackwalk");
    assert!(
        out.status.success(),
        "minidump-stackwalk refused our file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).expect("its JSON");
    let their_threads = theirs["threads"].as_array().expect("threads");
    let our_threads = ours["threads"].as_array().unwrap();
    assert_eq!(their_threads.len(), our_threads.len(), "{theirs}");
    let mut trampolines = 0;
    for t in their_threads {
        let tid = &t["thread_id"];
        let mine = our_threads
            .iter()
            .find(|m| m["tid"] == *tid)
            .unwrap_or_else(|| panic!("thread {tid} in our dump"));
        // Our unwinding: one address per native frame (inlined frames
        // share the address of the frame they are inlined into).
        let want: Vec<(u64, String)> = mine["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["inlined"] == false)
            .map(|f| {
                let a = f["address"].as_str().unwrap().trim_start_matches("0x");
                (
                    u64::from_str_radix(a, 16).unwrap(),
                    f["function"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        let got: Vec<u64> = t["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .map(|f| {
                let a = f["offset"].as_str().expect("offset");
                u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap()
            })
            .collect();
        // Caller frames: rust-minidump gives an address inside the call
        // (the return address − 1), we give the return address.
        let agree = |n: usize| {
            got.len() >= n
                && got
                    .iter()
                    .zip(&want)
                    .take(n)
                    .all(|(g, (w, _))| *g == *w || *g + 1 == *w)
        };
        // Through a signal frame only we go on: rust-minidump stops at the
        // trampoline (it has no rule for the sigreturn frame, whose CFI in
        // libc is a DWARF expression), so there both agree up to it.
        let trampoline = mine["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["inlined"] == false)
            .position(|f| f["kind"] == "signal-trampoline");
        let same = match trampoline {
            Some(k) => {
                trampolines += 1;
                agree(k + 1) && got.len() == k + 1
            }
            None => agree(want.len()) && got.len() == want.len(),
        };
        assert!(
            same,
            "thread {tid}: ours {want:x?}\ntheirs {got:x?}\n{}",
            t["frames"]
        );
    }
    assert_eq!(trampolines, 1, "the sighand thread only");
}
