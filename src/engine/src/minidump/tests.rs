use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::module::{CodeRange, FileIdentity, ModuleId, Modules};
use crate::proc::{MapEntry, MapPath};
use crate::snapshot::{KernelWait, Registers, StopKind, ThreadSnapshot};
use crate::unwind::{FrameKind, RawFrame, StackEnd};

fn map(start: u64, end: u64, exec: bool, offset: u64, path: MapPath) -> MapEntry {
    MapEntry {
        start,
        end,
        read: true,
        write: !exec,
        exec,
        shared: false,
        offset,
        dev: (8, 1),
        inode: 77,
        path,
    }
}

fn file(p: &str) -> MapPath {
    MapPath::File {
        path: p.into(),
        deleted: false,
    }
}

fn thread(tid: i32, regs: Option<Registers>, stack: Vec<u8>) -> ThreadSnapshot {
    ThreadSnapshot {
        tid,
        name: format!("worker-{tid}"),
        state: 'S',
        cpu_time: Duration::from_millis(1234),
        stop: StopKind::Interrupted,
        regs,
        stack_start: 0x7ffd_0000_1000,
        stack,
        stack_truncated: false,
        stack_error: None,
        kernel_wait: None,
    }
}

fn sample() -> ProcessSnapshot {
    let regs = Registers {
        rip: 0x5555_0000_1234,
        rsp: 0x7ffd_0000_1000,
        rbp: 0x7ffd_0000_1080,
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        rsi: 5,
        rdi: 6,
        r8: 8,
        r9: 9,
        r10: 10,
        r11: 11,
        r12: 12,
        r13: 13,
        r14: 14,
        r15: 15,
        eflags: 0x246,
        orig_rax: 7,
        fs_base: 0x7f00_dead_0000,
    };
    let mut stopped = thread(
        4242,
        Some(Registers {
            rip: 0x5555_0000_2000,
            ..regs
        }),
        vec![0xab; 64],
    );
    stopped.stop = StopKind::JobControl(19);
    let mut gone = thread(4244, None, Vec::new());
    gone.stop = StopKind::NotStopped("no such thread".into());
    gone.kernel_wait = Some(KernelWait {
        wchan: Some("futex_wait".into()),
        stack: vec!["futex_wait".into(), "do_futex".into()],
    });
    let mut main = thread(4241, Some(regs), (0u8..=255).cycle().take(4096).collect());
    main.stack_truncated = true;
    main.stack_error = Some("cap".into());
    let exe = crate::module::Module {
        name: "/srv/bin/svc".into(),
        path: Some("/srv/bin/svc".into()),
        start: 0x5555_0000_0000,
        end: 0x5555_0001_0000,
        bias: 0x5554_ffff_f000,
        build_id: Some(vec![
            0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ]),
        id: Some(ModuleId::BuildId(vec![
            0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ])),
        code: vec![CodeRange {
            start: 0x5555_0000_1000,
            end: 0x5555_0000_3000,
            offset: 0x1000,
        }],
        file: None,
        image: None,
        problem: None,
    };
    let noid = crate::module::Module {
        name: "/lib/libnoid.so".into(),
        path: Some("/lib/libnoid.so".into()),
        start: 0x7f00_0000_0000,
        end: 0x7f00_0000_2000,
        bias: 0x7f00_0000_0000,
        build_id: None,
        id: Some(ModuleId::File(FileIdentity {
            dev: (8, 1),
            inode: 99,
            size: 8192,
            mtime: 1_700_000_000,
        })),
        code: vec![CodeRange {
            start: 0x7f00_0000_1000,
            end: 0x7f00_0000_2000,
            offset: 0x1000,
        }],
        file: None,
        image: None,
        problem: Some("not ELF".into()),
    };
    let image = Arc::new(b"\x7fELF-vdso-image".to_vec());
    let vdso = crate::module::Module {
        name: "[vdso]".into(),
        path: None,
        start: 0x7fff_0000_0000,
        end: 0x7fff_0000_2000,
        bias: 0x7fff_0000_0000,
        build_id: None,
        id: Some(ModuleId::Image(crate::module::fnv(&image), image.len())),
        code: vec![CodeRange {
            start: 0x7fff_0000_0000,
            end: 0x7fff_0000_2000,
            offset: 0,
        }],
        file: None,
        image: Some(image),
        problem: None,
    };
    ProcessSnapshot {
        pid: 4241,
        name: "worker-4241".into(),
        taken_at: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
        freeze: Duration::from_micros(900),
        capture: Duration::from_micros(2500),
        phases: crate::snapshot::CapturePhases {
            prepare: Duration::from_micros(1),
            stop: Duration::from_micros(2),
            copy: Duration::from_micros(3),
            detach: Duration::from_micros(4),
        },
        threads: vec![main, stopped, gone],
        maps: vec![
            map(
                0x5555_0000_0000,
                0x5555_0000_1000,
                false,
                0,
                file("/srv/bin/svc"),
            ),
            map(
                0x5555_0000_1000,
                0x5555_0000_3000,
                true,
                0x1000,
                file("/srv/bin/svc"),
            ),
            map(
                0x7f00_0000_1000,
                0x7f00_0000_2000,
                true,
                0x1000,
                MapPath::File {
                    path: "/lib/libnoid.so\nx".into(),
                    deleted: true,
                },
            ),
            map(
                0x7ffd_0000_0000,
                0x7ffd_0001_0000,
                false,
                0,
                MapPath::Special("[stack]".into()),
            ),
            map(
                0x7fff_0000_0000,
                0x7fff_0000_2000,
                true,
                0,
                MapPath::Special("[vdso]".into()),
            ),
        ],
        modules: Modules {
            modules: vec![exe, noid, vdso],
        },
        files: Default::default(),
        vanished: vec![4250],
        exited: false,
        cause: Default::default(),
    }
}

/// Where the stream of type `ty` of `file` starts.
fn stream_rva(file: &[u8], ty: u32) -> usize {
    let f = super::bytes::In { data: file };
    let dir = f.u32(12, "").unwrap() as usize;
    let n = f.u32(8, "").unwrap() as usize;
    let i = (0..n)
        .find(|i| f.u32((dir + 12 * i) as u64, "").unwrap() == ty)
        .expect("the stream");
    f.u32((dir + 12 * i + 8) as u64, "").unwrap() as usize
}

fn annotations() -> serde_json::Value {
    serde_json::json!({"loops": {"4241": "main"}})
}

fn saved_bytes() -> Vec<u8> {
    let a = annotations();
    write(
        &sample(),
        &Extra {
            dump: None,
            proc_status: Some(b"Name:\tsvc\nPid:\t4241\n"),
            annotations: Some(&a),
        },
    )
}

#[test]
fn a_snapshot_survives_a_round_trip() {
    let snap = sample();
    let bytes = saved_bytes();
    assert_eq!(&bytes[..4], b"MDMP");
    let back = read(&bytes).expect("our own file reads back");
    assert!(!back.foreign);
    let s = &back.snapshot;
    assert_eq!((s.pid, s.name.as_str()), (4241, "worker-4241"));
    assert_eq!(s.taken_at, snap.taken_at);
    assert_eq!(
        (s.freeze, s.capture, s.phases),
        (snap.freeze, snap.capture, snap.phases)
    );
    assert_eq!(s.vanished, vec![4250]);
    assert_eq!(s.threads.len(), 3);
    for (a, b) in s.threads.iter().zip(&snap.threads) {
        assert_eq!(a.tid, b.tid);
        assert_eq!(a.name, b.name);
        assert_eq!(a.state, b.state);
        assert_eq!(a.cpu_time, b.cpu_time);
        assert_eq!(a.stop, b.stop);
        assert_eq!(a.regs, b.regs, "thread {}", a.tid);
        assert_eq!(a.stack, b.stack);
        assert_eq!(a.stack_truncated, b.stack_truncated);
        assert_eq!(a.stack_error, b.stack_error);
        assert_eq!(a.kernel_wait, b.kernel_wait);
        if !b.stack.is_empty() {
            assert_eq!(a.stack_start, b.stack_start);
        }
    }
    assert_eq!(s.maps, snap.maps, "LinuxMaps gives the maps back");
    assert_eq!(s.modules.modules.len(), 3);
    for (a, b) in s.modules.modules.iter().zip(&snap.modules.modules) {
        assert_eq!(
            (&a.name, &a.path, a.start, a.end, a.bias),
            (&b.name, &b.path, b.start, b.end, b.bias)
        );
        assert_eq!((&a.build_id, &a.id, &a.code), (&b.build_id, &b.id, &b.code));
        assert_eq!((&a.image, &a.problem), (&b.image, &b.problem));
    }
    assert_eq!(
        back.proc_status.as_deref(),
        Some(&b"Name:\tsvc\nPid:\t4241\n"[..])
    );
    assert_eq!(back.annotations, annotations());
    assert!(back.unwound.is_empty(), "no dump given");
}

#[test]
fn standard_streams_hold_what_other_readers_need() {
    let bytes = saved_bytes();
    let f = super::bytes::In { data: &bytes };
    let n = f.u32(8, "").unwrap();
    let dir = u64::from(f.u32(12, "").unwrap());
    let types: Vec<u32> = (0..u64::from(n))
        .map(|i| f.u32(dir + 12 * i, "").unwrap())
        .collect();
    for t in [
        3,
        4,
        5,
        7,
        15,
        24,
        0x4767_0004,
        0x4767_0009,
        AIODEBUG_STREAM,
    ] {
        assert!(types.contains(&t), "stream 0x{t:x} in {types:x?}");
    }
    // The executable's CodeView record: `BpEL` then the build-id bytes.
    let at = bytes
        .windows(4)
        .position(|w| w == b"LEpB")
        .expect("a BpEL record");
    assert_eq!(&bytes[at + 4..at + 8], &[0xde, 0xad, 0xbe, 0xef]);
    // The main thread's context: CONTEXT_AMD64 flags, rip at 248.
    let rip = 0x5555_0000_1234u64.to_le_bytes();
    let ctx = bytes
        .windows(8)
        .position(|w| w == rip)
        .expect("rip in a context");
    assert_eq!(f.u32(ctx as u64 - 248 + 48, "").unwrap(), CONTEXT_FLAGS);
}

#[test]
fn recorded_unwinding_comes_back() {
    let snap = sample();
    let mut v = stream::encode(&snap, &Extra::default());
    v["threads"][0]["unwound"] = serde_json::json!({
        "frames": [[0x5555_0000_1234u64, "pc"], [0x5555_0000_2222u64, "return"], [1u64, "bogus"]],
        "end": {"code": "no-unwind-info", "address": 0x5555_0000_2222u64},
    });
    v["threads"][1]["unwound"] = serde_json::json!({
        "frames": [], "end": {"code": "depth-cap", "count": 9},
    });
    let mut back = read(&write(&snap, &Extra::default())).unwrap().snapshot;
    let (u, _) = stream::apply(&v, &mut back).unwrap();
    let main = &u[&4241];
    assert_eq!(
        main.frames,
        vec![
            RawFrame {
                address: 0x5555_0000_1234,
                kind: FrameKind::Pc
            },
            RawFrame {
                address: 0x5555_0000_2222,
                kind: FrameKind::Return
            }
        ],
        "an unknown kind is dropped"
    );
    assert_eq!(main.end, StackEnd::NoUnwindInfo(0x5555_0000_2222));
    assert_eq!(u[&4242].end, StackEnd::DepthCap(9));
    assert!(!u.contains_key(&4244));
    // Another version is refused, not guessed at.
    v["version"] = serde_json::json!(2);
    assert!(stream::apply(&v, &mut back).is_err());
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let bytes = saved_bytes();
    for len in 0..bytes.len() {
        // Cut inside the aiodebug stream (the last) or anything before: an
        // error, or (cut in trailing padding) the same snapshot.
        if let Ok(s) = read(&bytes[..len]) {
            assert_eq!(s.snapshot.threads.len(), 3, "cut at {len}");
        }
    }
    assert!(
        read(&bytes[..bytes.len() - 1]).is_err(),
        "the last byte matters"
    );
}

#[test]
fn corrupt_fields_are_errors_with_reasons() {
    let good = saved_bytes();
    let e = |b: &[u8]| read(b).expect_err("corrupt").0;
    assert!(e(b"").contains("shorter than a minidump header"));
    assert!(e(&[b'x'; 64]).contains("no MDMP signature"));
    let mut v = good.clone();
    v[4] = 0x11;
    assert!(e(&v).contains("version"));
    let mut v = good.clone();
    v[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(e(&v).contains("streams listed"));
    let mut v = good.clone();
    v[12..16].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
    assert!(e(&v).contains("past the end"));
    // A thread list claiming 2^31 threads: refused before any allocation.
    let rva = stream_rva(&good, kind::THREAD_LIST);
    let mut v = good.clone();
    v[rva..rva + 4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    assert!(e(&v).contains("entries"), "{}", e(&v));
    let mut v = good.clone();
    v[rva..rva + 4].copy_from_slice(&1000u32.to_le_bytes());
    assert!(e(&v).contains("do not fit"), "{}", e(&v));
    // Not AMD64.
    let rva = stream_rva(&good, kind::SYSTEM_INFO);
    let mut v = good.clone();
    v[rva] = 12;
    assert!(e(&v).contains("architecture 12"));
    // A broken aiodebug stream is said, not skipped.
    let last = good.len() - 2;
    let mut v = good.clone();
    v[last] = b'\x01';
    assert!(e(&v).contains("not JSON"), "{}", e(&v));
}

#[test]
fn random_bytes_never_panic() {
    let good = saved_bytes();
    // A deterministic xorshift walk over single-byte corruptions.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut v = good.clone();
        let at = (x as usize) % v.len();
        v[at] = (x >> 32) as u8;
        let _ = read(&v);
    }
}

#[test]
fn a_file_of_another_writer_reads_from_its_standard_streams() {
    let snap = sample();
    let bytes = write(&snap, &Extra::default());
    // Drop our stream from the directory: what a foreign writer gives.
    let mut v = bytes.clone();
    let n = u32::from_le_bytes(v[8..12].try_into().unwrap());
    v[8..12].copy_from_slice(&(n - 1).to_le_bytes());
    let back = read(&v).unwrap();
    assert!(back.foreign);
    let s = &back.snapshot;
    assert_eq!(s.pid, 4241);
    assert_eq!(s.threads[0].name, "worker-4241");
    assert_eq!(s.threads[0].regs.map(|r| r.rip), Some(0x5555_0000_1234));
    let exe = &s.modules.modules[0];
    assert_eq!(exe.bias, exe.start, "assumed linked at 0");
    assert_eq!(exe.code, snap.modules.modules[0].code, "from LinuxMaps");
    assert!(s.modules.modules[2].image.is_some(), "the vDSO from memory");
}

#[test]
fn stacks_pointing_at_one_region_cannot_multiply_an_allocation() {
    // Every thread's stack descriptor points at the main thread's stack:
    // the copies would add up to more than the file.
    let mut many = sample();
    let main = many.threads[0].clone();
    many.threads = (0..64)
        .map(|i| ThreadSnapshot {
            tid: 5000 + i,
            ..main.clone()
        })
        .collect();
    let mut bytes = write(&many, &Extra::default());
    let rva = stream_rva(&bytes, kind::THREAD_LIST);
    let f = super::bytes::In { data: &bytes };
    let first = rva + 4;
    let (size, at) = (
        f.u32(first as u64 + 32, "").unwrap(),
        f.u32(first as u64 + 36, "").unwrap(),
    );
    let len = (size * 40).min(bytes.len() as u32 - at);
    for i in 0..64 {
        let e = first + 48 * i;
        bytes[e + 32..e + 36].copy_from_slice(&len.to_le_bytes());
        bytes[e + 36..e + 40].copy_from_slice(&at.to_le_bytes());
    }
    let e = read(&bytes).expect_err("refused").0;
    assert!(e.contains("more bytes than the file holds"), "{e}");
}
