//! Minidumps: `dump --save` and `watch --save-minidumps` write one
//! ([`minidump_of`]); `symbolize FILE.dmp` renders it later, anywhere, with
//! `dump`'s own formatter and JSON schema.
//!
//! The file is the engine's ([`aiodebug_engine::minidump`]); what only this
//! CLI knows goes in its annotations (JSON):
//! `{"loops": {"TID": "loop name"}, "causes": {"TID": {"line": "…", "json": {…}}}}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aiodebug_engine::dump::{Dump, DumpOptions, Dumper};
use aiodebug_engine::minidump::{self, Extra, Saved, SavedFiles};
use serde_json::{json, Value};

use crate::config::SymbolizeConfig;
use crate::dump::CauseView;
use crate::exit;
use crate::pyview::Stacks;

/// The annotations of a dump: loop names and causes by thread.
fn annotations(dump: &Dump, causes: &HashMap<i32, CauseView>) -> Value {
    let loops: serde_json::Map<String, Value> = dump
        .threads
        .iter()
        .filter_map(|t| Some((t.tid.to_string(), json!(t.event_loop.as_ref()?))))
        .collect();
    let causes: serde_json::Map<String, Value> = causes
        .iter()
        .map(|(tid, c)| (tid.to_string(), json!({"line": c.line, "json": c.json})))
        .collect();
    json!({"loops": loops, "causes": causes})
}

/// The minidump of a live `dump` (made with `keep_snapshot`), with its
/// causes and the target's `/proc/PID/status` read now; `None` without a
/// snapshot.
pub fn minidump_of(dump: &Dump, causes: &HashMap<i32, CauseView>) -> Option<Vec<u8>> {
    let snap = dump.snapshot.as_ref()?;
    let status = aiodebug_engine::proc::read_capped(
        Path::new(&format!("/proc/{}/status", snap.pid)),
        64 << 10,
    )
    .ok();
    let notes = annotations(dump, causes);
    Some(minidump::write(
        snap,
        &Extra {
            dump: Some(dump),
            proc_status: status.as_deref(),
            annotations: Some(&notes),
        },
    ))
}

/// Loop names and causes from a saved file's annotations (bounded: one per
/// thread of the snapshot at most).
fn restore(saved: &Saved) -> (HashMap<i32, String>, HashMap<i32, CauseView>) {
    let known = |k: &String| {
        k.parse::<i32>()
            .ok()
            .filter(|tid| saved.snapshot.threads.iter().any(|t| t.tid == *tid))
    };
    let mut loops = HashMap::new();
    if let Some(m) = saved.annotations["loops"].as_object() {
        for (k, v) in m {
            if let (Some(tid), Some(name)) = (known(k), v.as_str()) {
                loops.insert(tid, name.chars().take(256).collect());
            }
        }
    }
    let mut causes = HashMap::new();
    if let Some(m) = saved.annotations["causes"].as_object() {
        for (k, v) in m {
            if let (Some(tid), Some(line)) = (known(k), v["line"].as_str()) {
                causes.insert(
                    tid,
                    CauseView {
                        line: line.chars().take(4096).collect(),
                        json: v["json"].clone(),
                    },
                );
            }
        }
    }
    (loops, causes)
}

/// The dump of a saved snapshot, unwound (or its live unwinding kept) and
/// symbolized with the files `debug_dirs`, this host and debuginfod give.
pub fn dump_of(
    saved: &Saved,
    debug_dirs: &[PathBuf],
    stacks: Stacks,
) -> (Dump, HashMap<i32, CauseView>) {
    let opts: DumpOptions = crate::dump::debug_options(debug_dirs);
    let files = SavedFiles {
        debug_dirs: opts.debug_dirs.clone(),
        debuginfod: opts.debuginfod.clone(),
    };
    let mut dumper = Dumper::with_options(DumpOptions {
        stacks: stacks.into(),
        ..opts
    });
    let (loops, causes) = restore(saved);
    let dump = dumper.process_recorded(&saved.snapshot, Some(&loops), &files, &saved.unwound);
    // The process exits next (see `dump`).
    std::mem::forget(dumper);
    (dump, causes)
}

/// The exit code and message of a file that cannot be used.
fn bad_file(path: &Path, why: impl std::fmt::Display) -> ExitCode {
    crate::errln!("aiodebug-watch: {}: {why}", path.display());
    ExitCode::from(exit::BAD_FILE)
}

/// Runs `symbolize`.
pub fn run(args: &SymbolizeConfig) -> ExitCode {
    // Read whole, with a cap (one byte more tells a file over it).
    let cap = minidump::MAX_FILE;
    let bytes = match aiodebug_engine::proc::read_capped(&args.file, cap + 1) {
        Ok(b) if b.len() as u64 > cap => {
            return bad_file(&args.file, format!("larger than {cap} bytes"))
        }
        Ok(b) => b,
        Err(e) => return bad_file(&args.file, format!("cannot read it: {e}")),
    };
    let saved = match minidump::read(&bytes) {
        Ok(s) => s,
        Err(e) => return bad_file(&args.file, e),
    };
    drop(bytes);
    let (dump, causes) = dump_of(&saved, &args.debug_dirs, args.stacks);
    let mut rendered = Vec::new();
    if args.json {
        let mut v = crate::dump::dump_json(&dump);
        crate::dump::add_causes_json(&mut v, &causes);
        rendered.extend_from_slice(v.to_string().as_bytes());
        rendered.push(b'\n');
    } else {
        if saved.foreign {
            rendered.extend_from_slice(
                b"Note: written by another tool: threads unwound offline, no thread states\n",
            );
        }
        crate::dump::render_text(&dump, &causes, &mut rendered);
    }
    crate::out::bytes(&rendered);
    ExitCode::from(exit::OK)
}
