//! The aiodebug stream: JSON, one object.
//!
//! ```text
//! { "format": "aiodebug-watch snapshot", "version": 1,
//!   "pid": 42, "name": "svc", "taken_at_unix_ns": …, "freeze_ns": …, "capture_ns": …,
//!   "phases_ns": [prepare, stop, copy, detach], "vanished": [tid…], "exited": false,
//!   "threads": [{ "tid", "name", "state": "S", "cpu_time_ns",
//!                 "stop": {"kind": "interrupted" | "job-control" | "not-stopped",
//!                          "signal": 19, "reason": "…"},
//!                 "regs": bool, "orig_rax", "fs_base",
//!                 "stack_truncated", "stack_error",
//!                 "kernel_wait": {"wchan", "stack": […]} | null,
//!                 "unwound": {"frames": [[address, "kind"], …],
//!                             "end": {"code": "end-of-stack", "address", "message"}} | null }],
//!   "modules": [{ "start", "bias", "id": {"build_id": "hex"} | {"file": [maj, min, inode, size, mtime]}
//!                 | {"image": [hash, len]} | null, "code": [[start, end, offset]], "problem" }],
//!   "annotations": <the caller's value> }
//! ```
//!
//! Numbers are JSON numbers (addresses are below 2^64 and serde_json keeps
//! u64 exact). Every list is capped on reading, every field optional: a
//! missing one takes the value the standard streams gave.

use std::time::Duration;

use serde_json::{json, Value};

use crate::module::{CodeRange, FileIdentity, ModuleId};
use crate::snapshot::{KernelWait, ProcessSnapshot, StopKind};
use crate::unwind::{FrameKind, RawFrame, StackEnd, Unwound};

use super::{Extra, MAX_THREADS};

/// The `format` value.
pub const FORMAT: &str = "aiodebug-watch snapshot";
/// The version written; a reader takes this one only.
pub const STREAM_VERSION: u64 = 1;
/// Most frames read per thread.
const MAX_FRAMES: usize = 1 << 20;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn end_json(e: &StackEnd) -> Value {
    let (address, count) = match e {
        StackEnd::NoUnwindInfo(a) | StackEnd::OutsideCode(a) | StackEnd::UnreadableStack(a) => {
            (Some(*a), None)
        }
        StackEnd::DepthCap(n) => (None, Some(*n)),
        _ => (None, None),
    };
    let message = match e {
        StackEnd::Error(m) => Some(m.clone()),
        _ => None,
    };
    json!({"code": e.code(), "address": address, "count": count, "message": message})
}

fn end_of(v: &Value) -> StackEnd {
    let a = v["address"].as_u64().unwrap_or(0);
    match v["code"].as_str().unwrap_or("") {
        "end-of-stack" => StackEnd::Complete,
        "not-captured" => StackEnd::NotCaptured,
        "no-unwind-info" => StackEnd::NoUnwindInfo(a),
        "outside-code" => StackEnd::OutsideCode(a),
        "truncated-copy" => StackEnd::TruncatedCopy,
        "unreadable-stack" => StackEnd::UnreadableStack(a),
        "depth-cap" => StackEnd::DepthCap(
            v["count"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0),
        ),
        _ => StackEnd::Error(
            v["message"]
                .as_str()
                .unwrap_or("unknown end in the saved file")
                .to_string(),
        ),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The stream's JSON for `snap` and `extra`.
pub fn encode(snap: &ProcessSnapshot, extra: &Extra<'_>) -> Value {
    let threads: Vec<Value> = snap
        .threads
        .iter()
        .map(|t| {
            let stop = match &t.stop {
                StopKind::Interrupted => json!({"kind": "interrupted"}),
                StopKind::JobControl(s) => json!({"kind": "job-control", "signal": s}),
                StopKind::NotStopped(r) => json!({"kind": "not-stopped", "reason": r}),
            };
            let unwound = extra
                .dump
                .and_then(|d| d.threads.iter().find(|d| d.tid == t.tid))
                .map(|d| {
                    json!({
                        "frames": d.unwound.iter().map(|f| json!([f.address, f.kind.code()])).collect::<Vec<_>>(),
                        "end": end_json(&d.end),
                    })
                });
            json!({
                "tid": t.tid,
                "name": t.name,
                "state": t.state.to_string(),
                "cpu_time_ns": ns(t.cpu_time),
                "stop": stop,
                "regs": t.regs.is_some(),
                "orig_rax": t.regs.map(|r| r.orig_rax),
                "fs_base": t.regs.map(|r| r.fs_base),
                "stack_truncated": t.stack_truncated,
                "stack_error": t.stack_error,
                "kernel_wait": t.kernel_wait.as_ref().map(|k| json!({"wchan": k.wchan, "stack": k.stack})),
                "unwound": unwound,
            })
        })
        .collect();
    let modules: Vec<Value> = snap
        .modules
        .modules
        .iter()
        .map(|m| {
            let id = match &m.id {
                Some(ModuleId::BuildId(b)) => json!({"build_id": hex(b)}),
                Some(ModuleId::File(f)) => {
                    json!({"file": [f.dev.0, f.dev.1, f.inode, f.size, f.mtime]})
                }
                Some(ModuleId::Image(h, n)) => json!({"image": [h, n]}),
                None => Value::Null,
            };
            json!({
                "start": m.start,
                "bias": m.bias,
                "id": id,
                "code": m.code.iter().map(|c| json!([c.start, c.end, c.offset])).collect::<Vec<_>>(),
                "problem": m.problem,
            })
        })
        .collect();
    let taken = snap
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(ns)
        .unwrap_or(0);
    let p = &snap.phases;
    json!({
        "format": FORMAT,
        "version": STREAM_VERSION,
        "pid": snap.pid,
        "name": snap.name,
        "taken_at_unix_ns": taken,
        "freeze_ns": ns(snap.freeze),
        "capture_ns": ns(snap.capture),
        "phases_ns": [ns(p.prepare), ns(p.stop), ns(p.copy), ns(p.detach)],
        "vanished": snap.vanished,
        "exited": snap.exited,
        "threads": threads,
        "modules": modules,
        "annotations": extra.annotations.cloned().unwrap_or(Value::Null),
    })
}

fn list(v: &Value, cap: usize) -> &[Value] {
    let a = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    a.get(..cap.min(a.len())).unwrap_or(&[])
}

fn dur(v: &Value) -> Option<Duration> {
    v.as_u64().map(Duration::from_nanos)
}

/// Lays the stream's facts over `snap` (built from the standard streams);
/// returns the live unwinding by tid and the annotations.
pub fn apply(
    v: &Value,
    snap: &mut ProcessSnapshot,
) -> Result<(std::collections::HashMap<i32, Unwound>, Value), super::ReadError> {
    if v["format"] != FORMAT {
        return Err(super::ReadError(
            "the aiodebug stream is not an aiodebug-watch snapshot".into(),
        ));
    }
    if v["version"].as_u64() != Some(STREAM_VERSION) {
        return Err(super::ReadError(format!(
            "the aiodebug stream has version {}, this build reads {STREAM_VERSION}",
            v["version"]
        )));
    }
    if let Some(pid) = v["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
        snap.pid = pid;
    }
    if let Some(n) = v["name"].as_str() {
        snap.name = n.chars().take(256).collect();
    }
    if let Some(t) = dur(&v["taken_at_unix_ns"]) {
        snap.taken_at = std::time::UNIX_EPOCH + t;
    }
    snap.freeze = dur(&v["freeze_ns"]).unwrap_or_default();
    snap.capture = dur(&v["capture_ns"]).unwrap_or_default();
    let ph = list(&v["phases_ns"], 4);
    let phase = |i: usize| ph.get(i).and_then(dur).unwrap_or_default();
    snap.phases = crate::snapshot::CapturePhases {
        prepare: phase(0),
        stop: phase(1),
        copy: phase(2),
        detach: phase(3),
    };
    snap.vanished = list(&v["vanished"], MAX_THREADS)
        .iter()
        .filter_map(|t| t.as_i64().and_then(|t| i32::try_from(t).ok()))
        .collect();
    snap.exited = v["exited"].as_bool().unwrap_or(false);
    let mut unwound = std::collections::HashMap::new();
    // Indexes, not searches: the lists are long in a hostile file.
    let by_tid: std::collections::HashMap<i32, usize> = snap
        .threads
        .iter()
        .enumerate()
        .map(|(i, t)| (t.tid, i))
        .collect();
    for tv in list(&v["threads"], MAX_THREADS) {
        let Some(tid) = tv["tid"].as_i64().and_then(|t| i32::try_from(t).ok()) else {
            continue;
        };
        let Some(t) = by_tid.get(&tid).and_then(|&i| snap.threads.get_mut(i)) else {
            continue;
        };
        if let Some(n) = tv["name"].as_str() {
            t.name = n.chars().take(64).collect();
        }
        if let Some(c) = tv["state"].as_str().and_then(|s| s.chars().next()) {
            t.state = c;
        }
        t.cpu_time = dur(&tv["cpu_time_ns"]).unwrap_or_default();
        let reason = || tv["stop"]["reason"].as_str().unwrap_or("").to_string();
        t.stop = match tv["stop"]["kind"].as_str() {
            Some("job-control") => StopKind::JobControl(
                tv["stop"]["signal"]
                    .as_i64()
                    .and_then(|s| i32::try_from(s).ok())
                    .unwrap_or(0),
            ),
            Some("not-stopped") => StopKind::NotStopped(reason()),
            _ => StopKind::Interrupted,
        };
        if tv["regs"] == Value::Bool(false) {
            t.regs = None;
        }
        if let Some(r) = t.regs.as_mut() {
            r.orig_rax = tv["orig_rax"].as_u64().unwrap_or(u64::MAX);
            r.fs_base = tv["fs_base"].as_u64().unwrap_or(0);
        }
        t.stack_truncated = tv["stack_truncated"].as_bool().unwrap_or(false);
        t.stack_error = tv["stack_error"].as_str().map(str::to_string);
        t.kernel_wait = tv["kernel_wait"].as_object().map(|k| KernelWait {
            wchan: k.get("wchan").and_then(Value::as_str).map(str::to_string),
            stack: k
                .get("stack")
                .map(|s| list(s, KernelWait::MAX_FRAMES))
                .unwrap_or(&[])
                .iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect(),
        });
        if tv["unwound"].is_object() {
            let frames: Vec<RawFrame> = list(&tv["unwound"]["frames"], MAX_FRAMES)
                .iter()
                .filter_map(|f| {
                    Some(RawFrame {
                        address: f[0].as_u64()?,
                        kind: FrameKind::from_code(f[1].as_str()?)?,
                    })
                })
                .collect();
            unwound.insert(
                tid,
                Unwound {
                    frames,
                    end: end_of(&tv["unwound"]["end"]),
                },
            );
        }
    }
    let by_start: std::collections::HashMap<u64, usize> = snap
        .modules
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.start, i))
        .collect();
    for mv in list(&v["modules"], crate::module::MAX_MODULES) {
        let Some(start) = mv["start"].as_u64() else {
            continue;
        };
        let Some(m) = by_start
            .get(&start)
            .and_then(|&i| snap.modules.modules.get_mut(i))
        else {
            continue;
        };
        if let Some(b) = mv["bias"].as_u64() {
            m.bias = b;
        }
        let id = &mv["id"];
        if let Some(b) = id["build_id"].as_str().and_then(unhex) {
            m.id = Some(ModuleId::BuildId(b));
        } else if let [maj, min, ino, size, mtime] = list(&id["file"], 5) {
            m.id = Some(ModuleId::File(FileIdentity {
                dev: (
                    maj.as_u64().unwrap_or(0) as u32,
                    min.as_u64().unwrap_or(0) as u32,
                ),
                inode: ino.as_u64().unwrap_or(0),
                size: size.as_u64().unwrap_or(0),
                mtime: mtime.as_i64().unwrap_or(0),
            }));
        } else if let [h, n] = list(&id["image"], 2) {
            m.id = Some(ModuleId::Image(
                h.as_u64().unwrap_or(0),
                n.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(0),
            ));
        }
        let code: Vec<CodeRange> = list(&mv["code"], 4096)
            .iter()
            .filter_map(|c| {
                Some(CodeRange {
                    start: c[0].as_u64()?,
                    end: c[1].as_u64()?,
                    offset: c[2].as_u64()?,
                })
            })
            .filter(|c| c.start < c.end)
            .collect();
        if !code.is_empty() {
            m.code = code;
        }
        m.problem = mv["problem"].as_str().map(str::to_string);
    }
    Ok((unwound, v["annotations"].clone()))
}
