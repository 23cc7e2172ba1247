//! The unnamed parts of the eval loop in a stripped interpreter (pure).
//!
//! GCC may split a function in two: the part it expects to run, under the
//! function's symbol, and the rest (`fn.cold`) elsewhere in `.text`, with
//! an FDE of its own. A stripped build keeps only `.dynsym`, where the second
//! part has no name. Debian's python3.14 is such a build, and there the
//! split is lopsided: `_PyEval_EvalFrameDefault` covers 1196 bytes and the
//! eval loop runs in an unnamed range of 84 KB, so no native frame is named
//! like the loop and Python frames could not be merged.
//!
//! The rule that gives such a range back to its function, all three needed:
//! - the function's own bytes branch into it with a direct `jmp`/`jcc`
//!   (rel32: `e9`, `0f 80`–`0f 8f`): a part of a function is reached by
//!   jumps, another function by calls;
//! - its FDE does not start as a function does (x86_64: CFA = rsp+8, only
//!   the return address saved): at its first instruction a frame is already
//!   set up, the frame of the function that jumped there;
//! - no exported symbol starts inside it.
//!
//! The branch scan reads bytes, not decoded instructions (no disassembler):
//! a stray `e9`/`0f 8x` inside another instruction could name a target, but
//! only a target inside an FDE that starts mid-frame and holds no symbol
//! counts, which a random one all but never is.

use std::ops::Range;

use gimli::{CfaRule, UnwindSection};
use object::{Object, ObjectSection, ObjectSymbol};

/// The function whose parts are looked for.
pub const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";
/// Most parts kept (GCC makes one `.cold` part per function).
const MAX_PARTS: usize = 8;
/// Largest function scanned for branches.
const MAX_FUNCTION: u64 = 1 << 20;

/// Targets of the direct rel32 jumps (`e9`) and conditional jumps (`0f
/// 80`–`0f 8f`) in `code`, which starts at address `addr`, that leave
/// `code`'s range; sorted, deduplicated.
pub fn branch_targets(code: &[u8], addr: u64) -> Vec<u64> {
    let end = addr.saturating_add(code.len() as u64);
    let mut out = Vec::new();
    for i in 0..code.len() {
        let (len, rel_at) = match (code.get(i), code.get(i + 1)) {
            (Some(0xe9), _) => (5, i + 1),
            (Some(0x0f), Some(0x80..=0x8f)) => (6, i + 2),
            _ => continue,
        };
        let Some(rel) = code
            .get(rel_at..rel_at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_le_bytes)
        else {
            continue;
        };
        let next = addr.wrapping_add((i + len) as u64);
        let target = next.wrapping_add(rel as i64 as u64);
        if !(addr..end).contains(&target) {
            out.push(target);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The unnamed parts of [`EVAL_FUNCTION`] in the ELF file `data`, as
/// ranges of its addresses (before the load bias). Empty where the function
/// has no symbol, where nothing qualifies, or where the file cannot be
/// parsed.
pub fn eval_parts(data: &[u8]) -> Vec<Range<u64>> {
    let Ok(obj) = object::File::parse(data) else {
        return Vec::new();
    };
    if obj.architecture() != object::Architecture::X86_64 {
        // Why x86_64 only: the branch encodings and the entry CFA are its.
        return Vec::new();
    }
    let functions = || {
        obj.dynamic_symbols()
            .chain(obj.symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
    };
    let Some((start, size)) = functions()
        .find(|s| s.size() > 0 && s.name_bytes().is_ok_and(|n| n == EVAL_FUNCTION.as_bytes()))
        .map(|s| (s.address(), s.size()))
    else {
        return Vec::new();
    };
    if size > MAX_FUNCTION {
        return Vec::new();
    }
    let Some(code) = obj
        .sections()
        .find(|s| s.address() <= start && start.saturating_add(size) <= s.address() + s.size())
        .and_then(|s| s.data().ok().map(|d| (s.address(), d)))
        .and_then(|(base, d)| {
            let off = usize::try_from(start - base).ok()?;
            d.get(off..off.checked_add(usize::try_from(size).ok()?)?)
        })
    else {
        return Vec::new();
    };
    let targets = branch_targets(code, start);
    if targets.is_empty() {
        return Vec::new();
    }
    let Some(eh) = obj.section_by_name(".eh_frame") else {
        return Vec::new();
    };
    let Ok(eh_data) = eh.data() else {
        return Vec::new();
    };
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(eh.address());
    if let Some(text) = obj.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = obj.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let hdr = obj.section_by_name(".eh_frame_hdr");
    if let Some(h) = &hdr {
        bases = bases.set_eh_frame_hdr(h.address());
    }
    let eh_frame = gimli::EhFrame::new(eh_data, gimli::LittleEndian);
    // The FDE of each target: through `.eh_frame_hdr`'s sorted table (a
    // binary search a target), else one walk over every FDE.
    let mut fdes: Vec<Fde> = Vec::new();
    let parsed = hdr.as_ref().and_then(|h| h.data().ok()).and_then(|d| {
        gimli::EhFrameHdr::new(d, gimli::LittleEndian)
            .parse(&bases, 8)
            .ok()
    });
    match parsed.as_ref().and_then(|p| p.table()) {
        Some(table) => {
            for &t in &targets {
                if fdes.iter().any(|f| f.contains(t)) {
                    continue;
                }
                if let Ok(fde) =
                    table.fde_for_address(&eh_frame, &bases, t, |s, b, o| s.cie_from_offset(b, o))
                {
                    fdes.push(fde);
                }
            }
        }
        None => {
            let mut entries = eh_frame.entries(&bases);
            // Bounded by the section: each entry consumes its length.
            while let Ok(Some(entry)) = entries.next() {
                let gimli::CieOrFde::Fde(partial) = entry else {
                    continue;
                };
                let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
                    continue;
                };
                if targets.iter().any(|&t| fde.contains(t)) {
                    fdes.push(fde);
                }
            }
        }
    }
    let mut ctx = gimli::UnwindContext::new();
    let mut parts: Vec<Range<u64>> = Vec::new();
    for fde in fdes {
        let range = fde.initial_address()..fde.end_address();
        if range.contains(&start) || parts.contains(&range) {
            continue;
        }
        let Ok(row) = fde.unwind_info_for_address(&eh_frame, &bases, &mut ctx, range.start) else {
            continue;
        };
        let entry_like = matches!(
            row.cfa(),
            CfaRule::RegisterAndOffset { register, offset }
                if *register == gimli::X86_64::RSP && *offset == 8
        );
        if entry_like {
            continue;
        }
        // No exported or local symbol starts inside: a function of its own
        // (and a `.cold` part with a name needs no help).
        if functions().any(|s| range.contains(&s.address())) {
            continue;
        }
        parts.push(range);
        if parts.len() >= MAX_PARTS {
            break;
        }
    }
    parts
}

/// An FDE of the file's `.eh_frame`.
type Fde<'a> = gimli::FrameDescriptionEntry<gimli::EndianSlice<'a, gimli::LittleEndian>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_that_leave_the_function() {
        // At 0x1000: jmp -0x100 (to 0xf05), jne +0x10 (to 0x101b),
        // jmp +0 (to 0x1010: inside), a call (e8: not a branch), and a
        // truncated jmp at the end.
        let code = [
            0xe9, 0xfb, 0xfe, 0xff, 0xff, // 0x1000: jmp 0x1005-0x105 = 0xf00
            0x0f, 0x85, 0x10, 0x00, 0x00, 0x00, // 0x1005: jne 0x100b+0x10
            0xe9, 0x00, 0x00, 0x00, 0x00, // 0x100b: jmp 0x1010 (inside)
            0xe8, 0x00, 0x10, 0x00, 0x00, // 0x1010: call 0x2015
            0xe9, 0x01, // truncated
        ];
        let t = branch_targets(&code, 0x1000);
        assert!(t.contains(&0xf00), "{t:x?}");
        assert!(t.contains(&0x101b), "{t:x?}");
        assert!(!t.contains(&0x1010), "{t:x?}");
        assert!(!t.contains(&0x2015), "{t:x?}");
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn garbage_gives_no_parts() {
        assert!(eval_parts(b"").is_empty());
        assert!(eval_parts(b"\x7fELF\x02\x01\x01\0garbage").is_empty());
        assert!(eval_parts(&[0xe9; 4096]).is_empty());
        assert!(branch_targets(&[], 0).is_empty());
        assert!(branch_targets(&[0x0f], u64::MAX).is_empty());
    }
}
