//! Debug info for stripped binaries: `dump --debug-dir` (by build-id and
//! flat by debug-link name) and debuginfod (`DEBUGINFOD_URLS`) against a real
//! server, Debian's `debuginfod` (elfutils), started by the test over a
//! folder holding the fixture's debug file.
//!
//! The fixture is `fixtures/c/stacks.c` built `-O2 -g`, then split with
//! objcopy into a stripped binary (which runs) and its `.debug` file.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::split::{build_id, place_by_build_id, run, split};
use support::{watch_bin, Fixture, TempDir};

/// `dump --json PID` with `args`, the environment cleared of debuginfod
/// settings except `env`, its cache under `cache`.
fn dump(pid: i32, args: &[&str], env: &[(&str, &str)], cache: &Path) -> Value {
    let mut cmd = Command::new(watch_bin());
    cmd.arg("dump")
        .arg(pid.to_string())
        .arg("--json")
        .args(args)
        .env_remove("DEBUGINFOD_URLS")
        .env_remove("AIODEBUG_DEBUGINFOD_BUDGET")
        .env_remove("DEBUGINFOD_MAXSIZE")
        .env("XDG_CACHE_HOME", cache);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run aiodebug-watch dump");
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dump --json is JSON")
}

/// Frames of the module `module` (its path), in every thread.
fn frames_of<'a>(d: &'a Value, module: &Path) -> Vec<&'a Value> {
    let m = module.to_string_lossy();
    d["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .flat_map(|t| t["frames"].as_array().expect("frames").iter())
        .filter(|f| f["module"].as_str() == Some(m.as_ref()))
        .collect()
}

/// The fixture's `park_forever` is named, with stacks.c:LINE.
fn names_file_line(d: &Value, module: &Path) -> bool {
    frames_of(d, module).iter().any(|f| {
        f["function"] == "park_forever"
            && f["file"].as_str().is_some_and(|p| p.ends_with("stacks.c"))
            && f["line"].as_u64().is_some_and(|l| l > 0)
    })
}

/// Every frame of the module is `module+0x…` (no name, an offset).
fn all_unnamed(d: &Value, module: &Path) -> bool {
    let frames = frames_of(d, module);
    !frames.is_empty()
        && frames
            .iter()
            .all(|f| f["function"].is_null() && f["module_offset"].is_string())
}

fn notes(d: &Value) -> Vec<String> {
    d["debug_notes"]
        .as_array()
        .expect("debug_notes")
        .iter()
        .map(|n| n.as_str().expect("a note is a string").to_string())
        .collect()
}

/// The note naming `id`, if any.
fn note_of(d: &Value, id: &str) -> Option<String> {
    notes(d).into_iter().find(|n| n.contains(id))
}

fn spawn(exe: &Path) -> Fixture {
    let fx = Fixture::spawn_path(exe, &["8".to_string()]);
    // Past READY every thread is in its read; let the last enter the kernel.
    std::thread::sleep(Duration::from_millis(50));
    fx
}

#[test]
fn debug_dir_by_build_id_and_by_debug_link() {
    let dir = TempDir::new("dbgdir");
    let s = split(&dir, &[]);
    let fx = spawn(&s.stripped);
    let cache = dir.join("cache");

    let bare = dump(fx.pid, &[], &[], &cache);
    assert!(all_unnamed(&bare, &s.stripped), "{bare}");
    let note = note_of(&bare, &s.build_id).unwrap_or_else(|| panic!("{:?}", notes(&bare)));
    assert!(note.contains("DEBUGINFOD_URLS is not set"), "{note}");

    // By build-id, in a directory laid out as /usr/lib/debug.
    let by_id = dir.join("by-id");
    place_by_build_id(&by_id, &s.debug, &s.build_id);
    let d = dump(
        fx.pid,
        &["--debug-dir", by_id.to_str().unwrap()],
        &[],
        &cache,
    );
    assert!(names_file_line(&d, &s.stripped), "{d}");
    assert_eq!(note_of(&d, &s.build_id), None);

    // Flat, by the debug link's name (CRC-checked), after an empty directory.
    let flat = dir.join("flat");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&flat).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(&s.debug, flat.join("stacks.debug")).unwrap();
    std::fs::remove_file(&s.debug).unwrap();
    let args = [
        "--debug-dir",
        empty.to_str().unwrap(),
        "--debug-dir",
        flat.to_str().unwrap(),
    ];
    let d = dump(fx.pid, &args, &[], &cache);
    assert!(names_file_line(&d, &s.stripped), "{d}");

    // The text form names file:line too, and without it ends with the note.
    let text = Command::new(watch_bin())
        .args(["dump", &fx.pid.to_string()])
        .env_remove("DEBUGINFOD_URLS")
        .output()
        .expect("run dump");
    let text = String::from_utf8_lossy(&text.stdout);
    let last = text.lines().last().unwrap_or("");
    assert!(
        last.starts_with("Note: ") && last.contains(&s.build_id),
        "{text}"
    );
    assert!(text.contains("stacks-stripped+0x"), "{text}");
}

/// A debuginfod server on 127.0.0.1 (elfutils 0.188 listens on every
/// interface and has no option to choose one; the client only ever asks
/// 127.0.0.1), killed and reaped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The status code of `GET path` on 127.0.0.1:`port`, if it answers.
fn status_of(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Server {
    /// Starts `debuginfod -F` over `serve` (database under `db_dir`) and
    /// waits, polling up to 60 s, until it answers `build_id` (its scan of
    /// the folder takes about a second here).
    fn start(serve: &Path, db_dir: &Path, build_id: &str) -> Server {
        let path = format!("/buildid/{build_id}/debuginfo");
        let mut last = String::new();
        // A free port can be taken between our probe and its bind: retry.
        for attempt in 0..3 {
            let port = free_port();
            let child = Command::new("debuginfod")
                .args(["-F", "-t", "0", "-g", "0", "-c", "1"])
                .arg("-p")
                .arg(port.to_string())
                .arg("-d")
                .arg(db_dir.join(format!("db{attempt}.sqlite")))
                .arg(serve)
                .env_remove("DEBUGINFOD_URLS")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start debuginfod (apt-get install debuginfod; scripts/test does)");
            let mut server = Server { child, port };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = server.child.try_wait() {
                    last = format!("debuginfod exited: {st}");
                    break;
                }
                match status_of(port, &path) {
                    Some(200) => return server,
                    s => last = format!("answered {s:?}"),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(server);
        }
        panic!("debuginfod never served {path}: {last}");
    }
}

#[test]
fn debuginfod_serves_a_stripped_binarys_debug_info() {
    let dir = TempDir::new("dbgd");
    let s = split(&dir, &[]);
    let serve = dir.join("serve");
    std::fs::create_dir_all(&serve).unwrap();
    std::fs::rename(&s.debug, serve.join("stacks.debug")).unwrap();
    let server = Server::start(&serve, &dir, &s.build_id);
    let url = format!("http://127.0.0.1:{}", server.port);
    let fx = spawn(&s.stripped);

    // Fetched by build-id, cached, and file:line named.
    let cache = dir.join("cache");
    let d = dump(fx.pid, &[], &[("DEBUGINFOD_URLS", &url)], &cache);
    assert!(names_file_line(&d, &s.stripped), "{d}");
    assert_eq!(note_of(&d, &s.build_id), None);
    let cached = cache
        .join("aiodebug-watch/debuginfod")
        .join(&s.build_id)
        .join("debuginfo");
    assert!(cached.is_file(), "{} was not cached", cached.display());
    // Nothing but the cached file (no temporary left behind).
    let left: Vec<_> = std::fs::read_dir(cached.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("debuginfo")]);

    // A build the server does not have: a 404, said with its build-id.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = split(&other_dir, &["-Wl,--build-id=0x00d1ff00d1ff00d1ff00d1ff"]);
    let ofx = spawn(&other.stripped);
    let d = dump(ofx.pid, &[], &[("DEBUGINFOD_URLS", &url)], &cache);
    assert!(all_unnamed(&d, &other.stripped), "{d}");
    let note = note_of(&d, &other.build_id).unwrap_or_else(|| panic!("{:?}", notes(&d)));
    assert!(note.contains("404") && note.contains(&url), "{note}");

    // The server gone: from the cache still; without it, a clear note.
    drop(server);
    let d = dump(fx.pid, &[], &[("DEBUGINFOD_URLS", &url)], &cache);
    assert!(names_file_line(&d, &s.stripped), "{d}");
    let fresh = dir.join("fresh-cache");
    let d = dump(fx.pid, &[], &[("DEBUGINFOD_URLS", &url)], &fresh);
    assert!(all_unnamed(&d, &s.stripped), "{d}");
    let note = note_of(&d, &s.build_id).unwrap_or_else(|| panic!("{:?}", notes(&d)));
    assert!(
        note.contains("debuginfod did not deliver") && note.contains("cannot connect"),
        "{note}"
    );
}

/// A server that accepts and never answers: the dump ends at its budget,
/// with a note naming the build-id and the budget.
#[test]
fn a_silent_debuginfod_costs_at_most_the_budget() {
    let dir = TempDir::new("dbgd-silent");
    let s = split(&dir, &[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    // Accepted connections are held open, silent, until the test ends.
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(16) {
            match c {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let fx = spawn(&s.stripped);
    let url = format!("http://127.0.0.1:{port}");
    let d = dump(
        fx.pid,
        &[],
        &[
            ("DEBUGINFOD_URLS", &url),
            ("AIODEBUG_DEBUGINFOD_BUDGET", "0.5"),
        ],
        &dir.join("cache"),
    );
    assert!(all_unnamed(&d, &s.stripped), "{d}");
    let note = note_of(&d, &s.build_id).unwrap_or_else(|| panic!("{:?}", notes(&d)));
    assert!(note.contains("budget"), "{note}");
}

/// https is not spoken: said so, and the next URL is asked.
#[test]
fn an_https_url_is_skipped_with_a_note() {
    let dir = TempDir::new("dbgd-https");
    let s = split(&dir, &[]);
    let fx = spawn(&s.stripped);
    let d = dump(
        fx.pid,
        &[],
        &[(
            "DEBUGINFOD_URLS",
            &format!("https://127.0.0.1:1 http://127.0.0.1:{}", free_port()),
        )],
        &dir.join("cache"),
    );
    let note = note_of(&d, &s.build_id).unwrap_or_else(|| panic!("{:?}", notes(&d)));
    assert!(
        note.contains("https is not supported") && note.contains("cannot connect"),
        "{note}"
    );
}

/// `watch --debug-dir`: a hang of a stripped heartbeat fixture is written
/// with the fixture's own frames named at file:line, from the debug file of
/// its unstripped build (same build-id) in a directory by build-id; without
/// the flag, the hang file says why the frames are `module+0x…`.
#[test]
fn watch_hang_files_use_the_debug_dir() {
    use support::{fixture_path, Variant};
    let dir = TempDir::new("dbgdir-watch");
    let full = fixture_path("fx-thread-loop", Variant::Pie);
    let stripped = fixture_path("fx-thread-loop", Variant::PieStripped);
    let id = build_id(&stripped);
    assert_eq!(build_id(&full), id, "strip keeps the build-id");
    let debug = dir.join("fx.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(&debug));
    let debug_dir = dir.join("debug");
    place_by_build_id(&debug_dir, &debug, &id);

    let hang_file = |extra: &[&str], tag: &str| -> String {
        let mut fx = Fixture::spawn_path(&stripped, &[]);
        let out = dir.join(tag);
        /// The watcher, killed and reaped on drop (also if the test fails).
        struct Reap(Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut w = Reap(
            Command::new(watch_bin())
                .args([
                    "watch",
                    &fx.pid.to_string(),
                    "--json",
                    "--exit-on-hang",
                    "--dumps",
                    "1",
                ])
                .arg("--output-dir")
                .arg(&out)
                .args(extra)
                .env_remove("DEBUGINFOD_URLS")
                .stdout(Stdio::piped())
                .spawn()
                .expect("start watch"),
        );
        // Its loops are found after the preload (symbols loaded before any
        // hang, the debug directory's too).
        let events = support::json_events(w.0.stdout.take().expect("stdout"));
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let ev = events.recv_timeout(left).expect("a loop_found event");
            if ev["event"] == "loop_found" {
                break;
            }
        }
        fx.ok("block ticker 2000");
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = w.0.try_wait().expect("wait for watch") {
                break st;
            }
            assert!(Instant::now() < end, "watch did not exit after the hang");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(1), "exit 1 after the hang's files");
        let file = std::fs::read_dir(&out)
            .expect("the output directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("stacktrace-"))
            })
            .expect("a hang file");
        std::fs::read_to_string(file).expect("read the hang file")
    };

    let with = hang_file(&["--debug-dir", debug_dir.to_str().unwrap()], "with");
    assert!(
        with.lines().any(|l| l.contains("aiodebug_fixtures::")
            && l.contains(".rs:")
            && l.contains("[fx-thread-loop]")),
        "{with}"
    );
    assert!(!with.contains(&id), "{with}");
    let without = hang_file(&[], "without");
    assert!(without.contains("fx-thread-loop+0x"), "{without}");
    assert!(
        without
            .lines()
            .any(|l| l.starts_with("note:") && l.contains(&id)),
        "{without}"
    );
}
