//! Offline unwinding of a captured thread: from its registers and copied
//! stack bytes to a list of code addresses, after the target runs again.
//!
//! DWARF CFI (`.eh_frame` with `.eh_frame_hdr`, or `.debug_frame`, from the
//! module or its separate debug file) through `framehop`, which falls back to
//! frame pointers where a module has no CFI. On top of it: signal frames
//! (x86_64 `__restore_rt`, recognized by its code bytes: registers are
//! recovered from the `ucontext` on the copied stack) and the vDSO (whose
//! image is copied into the snapshot by [`crate::module`]). No depth
//! limit short of a sanity cap; every stack says why it ended.

use std::collections::HashMap;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};

use crate::snapshot::ThreadSnapshot;
use crate::symbols::{AddressSpace, SectionBytes};

/// Default sanity cap on frames per thread.
pub const DEFAULT_MAX_FRAMES: usize = 4096;

/// `mov $15, %rax; syscall`: the body of x86_64 `__restore_rt` (rt_sigreturn).
const SIGRETURN_CODE: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
/// Offset of `uc_mcontext` in `struct ucontext` (uc_flags, uc_link, stack_t).
const UC_MCONTEXT: u64 = 40;
/// Indices of registers in `mcontext_t.gregs`.
const REG_RBP: u64 = 10;
const REG_RSP: u64 = 15;
const REG_RIP: u64 = 16;

/// What a code address of a stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The thread's instruction pointer (innermost frame).
    Pc,
    /// A return address: the call is the instruction before it.
    Return,
    /// The signal-return trampoline: a signal handler was called here
    /// (gdb's `<signal handler called>`).
    SignalTrampoline,
    /// The instruction pointer a signal interrupted (from the signal frame).
    Interrupted,
    /// A Python frame (`crate::python`): the address is its instruction pointer.
    Python,
}

impl FrameKind {
    /// Its name in JSON (`pc`, `return`, `signal-trampoline`,
    /// `signal-interrupted`, `python`).
    pub fn code(self) -> &'static str {
        match self {
            FrameKind::Pc => "pc",
            FrameKind::Return => "return",
            FrameKind::SignalTrampoline => "signal-trampoline",
            FrameKind::Interrupted => "signal-interrupted",
            FrameKind::Python => "python",
        }
    }

    /// The kind named `code` ([`FrameKind::code`]).
    pub fn from_code(code: &str) -> Option<FrameKind> {
        [
            FrameKind::Pc,
            FrameKind::Return,
            FrameKind::SignalTrampoline,
            FrameKind::Interrupted,
            FrameKind::Python,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }

    /// Whether symbolization should look at the instruction before the
    /// address (a call's return address). The signal trampoline is entered at
    /// its first byte by the handler's return: it is looked up as is.
    pub fn is_return(self) -> bool {
        matches!(self, FrameKind::Return)
    }
}

/// One unwound code address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame {
    /// The address (AVMA).
    pub address: u64,
    /// What it is.
    pub kind: FrameKind,
}

/// Why a stack ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackEnd {
    /// The unwind info says this is the outermost frame (`_start`, thread start).
    Complete,
    /// The thread was not stopped: no registers.
    NotCaptured,
    /// No unwind info for this address, and frame pointers led nowhere.
    NoUnwindInfo(u64),
    /// Unwinding produced an address outside any executable mapping.
    OutsideCode(u64),
    /// The next frame lies beyond the copied part of a stack larger than the copy cap.
    TruncatedCopy,
    /// The next frame needs stack memory that was not captured (at this address).
    UnreadableStack(u64),
    /// The sanity cap on frames was reached.
    DepthCap(usize),
    /// The unwinder gave up (its reason).
    Error(String),
}

impl std::fmt::Display for StackEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackEnd::Complete => write!(f, "end of stack"),
            StackEnd::NotCaptured => write!(f, "thread not captured"),
            StackEnd::NoUnwindInfo(a) => write!(f, "no unwind info for 0x{a:x}"),
            StackEnd::OutsideCode(a) => write!(f, "return address 0x{a:x} is outside code"),
            StackEnd::TruncatedCopy => write!(f, "stack copy truncated (cap reached)"),
            StackEnd::UnreadableStack(a) => write!(f, "stack not captured at 0x{a:x}"),
            StackEnd::DepthCap(n) => write!(f, "stopped after {n} frames (sanity cap)"),
            StackEnd::Error(e) => write!(f, "unwinding failed: {e}"),
        }
    }
}

impl StackEnd {
    /// A short machine-readable name (`end-of-stack`, `no-unwind-info`, …).
    pub fn code(&self) -> &'static str {
        match self {
            StackEnd::Complete => "end-of-stack",
            StackEnd::NotCaptured => "not-captured",
            StackEnd::NoUnwindInfo(_) => "no-unwind-info",
            StackEnd::OutsideCode(_) => "outside-code",
            StackEnd::TruncatedCopy => "truncated-copy",
            StackEnd::UnreadableStack(_) => "unreadable-stack",
            StackEnd::DepthCap(_) => "depth-cap",
            StackEnd::Error(_) => "error",
        }
    }
}

/// A thread's stack as addresses.
#[derive(Debug, Clone)]
pub struct Unwound {
    /// Innermost first.
    pub frames: Vec<RawFrame>,
    /// Why it ended.
    pub end: StackEnd,
}

type ModuleKey = (usize, u64, u64, u64);

/// Unwinds threads of snapshots; keeps framehop's rule cache and per-module
/// unwind tables across snapshots.
pub struct StackUnwinder {
    cache: CacheX86_64,
    modules: HashMap<ModuleKey, Module<SectionBytes>>,
    current: Option<(Vec<ModuleKey>, UnwinderX86_64<SectionBytes>)>,
    /// Sanity cap on frames per thread.
    pub max_frames: usize,
}

impl std::fmt::Debug for StackUnwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackUnwinder")
            .field("modules", &self.modules.len())
            .field("max_frames", &self.max_frames)
            .finish_non_exhaustive()
    }
}

impl Default for StackUnwinder {
    fn default() -> Self {
        StackUnwinder::new()
    }
}

fn module_key(m: &crate::symbols::MappedModule) -> Option<ModuleKey> {
    let image = m.image.as_ref()?;
    Some((std::rc::Rc::as_ptr(image) as usize, m.start, m.end, m.bias))
}

impl StackUnwinder {
    /// A new unwinder with the default frame cap.
    pub fn new() -> StackUnwinder {
        StackUnwinder {
            cache: CacheX86_64::new(),
            modules: HashMap::new(),
            current: None,
            max_frames: DEFAULT_MAX_FRAMES,
        }
    }

    /// Makes framehop's unwinder match `space` (reused when unchanged).
    fn prepare(&mut self, space: &AddressSpace) {
        let keys: Vec<ModuleKey> = space.modules.iter().filter_map(module_key).collect();
        if matches!(&self.current, Some((k, _)) if *k == keys) {
            return;
        }
        let mut unwinder = UnwinderX86_64::new();
        for m in &space.modules {
            let (Some(key), Some(image)) = (module_key(m), m.image.as_ref()) else {
                continue;
            };
            let module = self.modules.entry(key).or_insert_with(|| {
                let debug_frame = match (&image.eh_frame, &image.debug_frame) {
                    (None, None) => image.separate_debug_frame(),
                    (_, df) => df.clone(),
                };
                let info = ExplicitModuleSectionInfo {
                    base_svma: 0,
                    text_svma: image.text_svma.clone(),
                    got_svma: image.got_svma.clone(),
                    eh_frame_svma: image.eh_frame.as_ref().map(|s| s.svma.clone()),
                    eh_frame: image.eh_frame.as_ref().map(|s| s.data.clone()),
                    eh_frame_hdr_svma: image.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
                    eh_frame_hdr: image.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
                    debug_frame: debug_frame.map(|s| s.data),
                    ..Default::default()
                };
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Module::new(m.name.clone(), m.start..m.end, m.bias, info)
                }));
                built.unwrap_or_else(|_| {
                    Module::new(
                        m.name.clone(),
                        m.start..m.end,
                        m.bias,
                        ExplicitModuleSectionInfo::<SectionBytes>::default(),
                    )
                })
            });
            unwinder.add_module(module.clone());
        }
        if self.modules.len() > 4096 {
            self.modules.clear();
        }
        self.current = Some((keys, unwinder));
    }

    /// Unwinds one captured thread of a process whose modules are `space`.
    pub fn unwind(&mut self, space: &AddressSpace, thread: &ThreadSnapshot) -> Unwound {
        let Some(regs) = thread.regs else {
            return Unwound {
                frames: Vec::new(),
                end: StackEnd::NotCaptured,
            };
        };
        self.prepare(space);
        let max = self.max_frames.max(1);
        let Some((_, unwinder)) = &self.current else {
            return Unwound {
                frames: Vec::new(),
                end: StackEnd::NotCaptured,
            };
        };
        let cache = &mut self.cache;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            walk(
                unwinder, cache, space, thread, regs.rip, regs.rsp, regs.rbp, max,
            )
        }));
        result.unwrap_or_else(|_| Unwound {
            frames: vec![RawFrame {
                address: regs.rip,
                kind: FrameKind::Pc,
            }],
            end: StackEnd::Error("unwinder panicked".to_string()),
        })
    }
}

/// Whether `addr` is the signal-return trampoline (at its start, or inside it
/// for the innermost frame).
fn sigreturn_at(space: &AddressSpace, addr: u64, innermost: bool) -> bool {
    let at = |a: u64| space.code_bytes(a, SIGRETURN_CODE.len()) == Some(&SIGRETURN_CODE[..]);
    if at(addr) {
        return true;
    }
    innermost
        && [7u64, 9]
            .iter()
            .any(|&back| addr.checked_sub(back).is_some_and(at))
}

#[allow(clippy::too_many_arguments)]
fn walk(
    unwinder: &UnwinderX86_64<SectionBytes>,
    cache: &mut CacheX86_64,
    space: &AddressSpace,
    thread: &ThreadSnapshot,
    rip: u64,
    rsp: u64,
    rbp: u64,
    max: usize,
) -> Unwound {
    let mut frames = vec![RawFrame {
        address: rip,
        kind: FrameKind::Pc,
    }];
    let mut regs = UnwindRegsX86_64::new(rip, rsp, rbp);
    let mut addr = FrameAddress::InstructionPointer(rip);
    let mut read = |a: u64| thread.read_u64(a).ok_or(());
    let end = loop {
        if frames.len() >= max {
            break StackEnd::DepthCap(max);
        }
        let innermost = frames.len() == 1;
        if sigreturn_at(space, addr.address(), innermost) {
            if let Some(last) = frames.last_mut() {
                last.kind = FrameKind::SignalTrampoline;
            }
            // The stack pointer is at the ucontext the kernel pushed.
            let uc = regs.sp();
            let greg = |i: u64| {
                uc.checked_add(UC_MCONTEXT + 8 * i)
                    .and_then(|a| thread.read_u64(a))
            };
            let (Some(nip), Some(nsp), Some(nbp)) = (greg(REG_RIP), greg(REG_RSP), greg(REG_RBP))
            else {
                break missing_stack(thread, uc);
            };
            if nip == 0 || !space.is_code(nip) {
                break StackEnd::OutsideCode(nip);
            }
            regs = UnwindRegsX86_64::new(nip, nsp, nbp);
            addr = FrameAddress::InstructionPointer(nip);
            frames.push(RawFrame {
                address: nip,
                kind: FrameKind::Interrupted,
            });
            continue;
        }
        match unwinder.unwind_frame(addr, &mut regs, cache, &mut read) {
            Ok(Some(ra)) => {
                let Some(next) = FrameAddress::from_return_address(ra) else {
                    break StackEnd::Complete;
                };
                if !space.is_code(ra) {
                    break no_info_or(space, addr.address(), StackEnd::OutsideCode(ra));
                }
                addr = next;
                frames.push(RawFrame {
                    address: ra,
                    kind: FrameKind::Return,
                });
            }
            Ok(None) => break StackEnd::Complete,
            Err(framehop::Error::CouldNotReadStack(a)) => {
                break no_info_or(space, addr.address(), missing_stack(thread, a))
            }
            Err(e) => break no_info_or(space, addr.address(), StackEnd::Error(e.to_string())),
        }
    };
    Unwound { frames, end }
}

fn missing_stack(thread: &ThreadSnapshot, addr: u64) -> StackEnd {
    if thread.stack_truncated && addr >= thread.stack_end() {
        StackEnd::TruncatedCopy
    } else {
        StackEnd::UnreadableStack(addr)
    }
}

/// When unwinding fails in a module without CFI, that is the real reason.
fn no_info_or(space: &AddressSpace, addr: u64, other: StackEnd) -> StackEnd {
    let has_cfi = space
        .module_at(addr)
        .and_then(|m| m.image.as_ref())
        .is_some_and(|i| i.eh_frame.is_some() || i.debug_frame.is_some());
    if has_cfi {
        other
    } else {
        StackEnd::NoUnwindInfo(addr)
    }
}
