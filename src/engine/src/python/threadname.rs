//! The `threading` name of a thread (`threading.Thread(name="db-pool-1")`),
//! read after the detach.
//!
//! py-spy looks the name up in `threading._active` (ident → `Thread`), found
//! through `sys.modules`. This reader takes a shorter way that needs no module
//! or `int`-keyed dict lookups: every thread `threading` starts runs
//! `Thread._bootstrap(self)` at the bottom of its Python stack, so the
//! thread's own outermost frame holds its `Thread` object as local 0; the
//! name is that object's `_name` attribute. The frame chain was read during
//! the stop; the bottom frame lives as long as the thread, and the `Thread`
//! and its name string are read after the detach (a name set while the
//! snapshot is decoded may show the old or the new one — either is right).
//! The main thread never runs `_bootstrap`: it has no name here.
//!
//! Attribute lookup follows each version's instance layout (all `Thread`
//! subclasses without `__slots__` are "managed dict" types):
//! - 3.11: the values array pointer at `obj - 32`, or a dict at `obj - 24`;
//! - 3.12: at `obj - 24` a dict, or the values array's address minus 1
//!   (bit 0 tags it: checked on pyenv's 3.12.1);
//! - 3.13+: a dict at `obj - 24`, or the values inline at
//!   `obj + tp_basicsize` (after a 4-byte header, pointer-aligned);
//!
//! values arrays are indexed like the keys the type shares
//! (`PyHeapTypeObject.ht_cached_keys`). Each step is bounded and checked;
//! any failure is an error the caller turns into "no name".

use super::capture::RawFrame;
use super::code::{read_unicode, CodeCache};
use super::layout::Layout;
use super::memory::{read_u64, read_vec, u64_at, u8_at, PyResult, ReadMemory};

/// `PyTypeObject.tp_basicsize` (after the var-object header and `tp_name`).
const TP_BASICSIZE: u64 = 32;
/// `PyTypeObject.tp_flags` (after tp_as_buffer: the same 3.11–3.14).
const TP_FLAGS: u64 = 168;
/// `Py_TPFLAGS_MANAGED_DICT`.
const MANAGED_DICT: u64 = 1 << 4;
/// `Py_TPFLAGS_INLINE_VALUES` (3.13+).
const INLINE_VALUES: u64 = 1 << 2;
/// From the end of `PyTypeObject` to `ht_cached_keys` in `PyHeapTypeObject`:
/// as_async (4 slots), as_number (36), as_mapping (3), as_sequence (10),
/// as_buffer (2), then ht_name, ht_slots, ht_qualname — 58 pointers
/// (3.11–3.14; checked with ctypes on 3.11.7, 3.13.5 and 3.14.8).
const CACHED_KEYS_AFTER_TYPE: u64 = 58 * 8;
/// `PyDictObject.ma_keys`, `.ma_values` (3.11–3.14).
const MA_KEYS: u64 = 32;
const MA_VALUES: u64 = 40;
/// `PyDictKeysObject`'s header; `dk_indices` follows it.
const DK_HEADER: u64 = 32;
/// Most dict entries looked at (a `Thread` has about 15 attributes).
const MAX_ENTRIES: u64 = 512;

/// A thread `threading` started: its name, and the `threading` module's
/// globals (its `_bootstrap` frame's `f_globals`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// `Thread._name`.
    pub name: String,
    /// The `threading` module's dict.
    pub globals: u64,
}

/// The name of the thread whose frames (innermost first) are `frames`, if
/// it was started by `threading`.
pub fn thread_name(
    mem: &dyn ReadMemory,
    l: &Layout,
    codes: &mut CodeCache,
    frames: &[RawFrame],
) -> PyResult<Option<Started>> {
    // Outermost first: `_bootstrap` is at (or next to) the bottom.
    for f in frames.iter().rev().take(4) {
        if f.executable == 0 {
            continue;
        }
        let Ok(Some(code)) = codes.get(mem, l, f.executable) else {
            continue;
        };
        if code.qualname != "Thread._bootstrap" || !code.filename.ends_with("threading.py") {
            continue;
        }
        let local0 = read_u64(mem, f.addr.wrapping_add(l.frame_localsplus))?;
        // 3.14's locals are tagged stack references, like f_executable.
        let thread = local0 & !l.executable_tag_mask;
        let Some(name) = attribute(mem, l, thread, "_name")? else {
            return Ok(None);
        };
        let globals = read_u64(mem, f.addr.wrapping_add(l.frame_globals))?;
        return Ok(Some(Started {
            name: read_unicode(mem, l, name)?,
            globals,
        }));
    }
    Ok(None)
}

/// The main thread's `threading` name and ident (`threading._main_thread`,
/// found in the module's `globals`): the main thread runs no `_bootstrap`.
pub fn main_thread(
    mem: &dyn ReadMemory,
    l: &Layout,
    globals: u64,
) -> PyResult<Option<(u64, String)>> {
    let Some(main) = dict_get(mem, l, globals, "_main_thread")? else {
        return Ok(None);
    };
    let (Some(ident), Some(name)) = (
        attribute(mem, l, main, "_ident")?,
        attribute(mem, l, main, "_name")?,
    ) else {
        return Ok(None);
    };
    Ok(Some((
        super::asyncio::read_small_int(mem, l, ident)?,
        read_unicode(mem, l, name)?,
    )))
}

/// The attribute `name` of the managed-dict object at `obj`, if set.
pub fn attribute(mem: &dyn ReadMemory, l: &Layout, obj: u64, name: &str) -> PyResult<Option<u64>> {
    let ty = read_u64(mem, obj.wrapping_add(l.ob_type))?;
    let head = read_vec(mem, ty, (TP_FLAGS + 8) as usize)?;
    let flags = u64_at(&head, TP_FLAGS).unwrap_or(0);
    if flags & MANAGED_DICT == 0 {
        return Err(format!("object 0x{obj:x} has no managed dict"));
    }
    let cached_keys = || read_u64(mem, ty.wrapping_add(l.type_size + CACHED_KEYS_AFTER_TYPE));
    let minor = l.version.minor();
    // 3.13+ values arrays start with capacity, size, embedded, valid.
    let values_header = if minor >= 13 { 8 } else { 0 };
    let pre = read_vec(mem, obj.wrapping_sub(32), 32)?;
    let word = |i: u64| u64_at(&pre, i).unwrap_or(0);
    let (dict_at_minus_24, values_at_minus_32) = (word(8), word(0));
    match minor {
        11 if dict_at_minus_24 != 0 => dict_get(mem, l, dict_at_minus_24, name),
        11 if values_at_minus_32 != 0 => {
            split_get(mem, l, cached_keys()?, values_at_minus_32, 0, name)
        }
        // 3.12 stores `values - 1` (_PyDictOrValues_SetValues).
        12 if dict_at_minus_24 & 1 == 1 => split_get(
            mem,
            l,
            cached_keys()?,
            dict_at_minus_24.wrapping_add(1),
            0,
            name,
        ),
        12 if dict_at_minus_24 != 0 => dict_get(mem, l, dict_at_minus_24, name),
        13.. if dict_at_minus_24 != 0 => dict_get(mem, l, dict_at_minus_24, name),
        13.. if flags & INLINE_VALUES != 0 => {
            let basic = u64_at(&head, TP_BASICSIZE).unwrap_or(0);
            if basic == 0 || basic > 1 << 16 {
                return Err(format!("implausible tp_basicsize {basic}"));
            }
            let values = obj.wrapping_add(basic);
            // `valid` is cleared once the values moved into a dict.
            if read_vec(mem, values, 4)?.get(3) != Some(&1) {
                return Ok(None);
            }
            split_get(mem, l, cached_keys()?, values, values_header, name)
        }
        _ => Ok(None),
    }
}

/// `d[name]` of the dict at `d` (split or combined).
fn dict_get(mem: &dyn ReadMemory, l: &Layout, d: u64, name: &str) -> PyResult<Option<u64>> {
    let b = read_vec(mem, d, (MA_VALUES + 8) as usize)?;
    let keys = u64_at(&b, MA_KEYS).unwrap_or(0);
    let values = u64_at(&b, MA_VALUES).unwrap_or(0);
    if values != 0 {
        let header = if l.version.minor() >= 13 { 8 } else { 0 };
        return split_get(mem, l, keys, values, header, name);
    }
    Ok(find_key(mem, l, keys, name)?.and_then(|(_, value)| value))
}

/// The value of `name` in a split table: keys shared, values apart.
fn split_get(
    mem: &dyn ReadMemory,
    l: &Layout,
    keys: u64,
    values: u64,
    header: u64,
    name: &str,
) -> PyResult<Option<u64>> {
    let Some((i, _)) = find_key(mem, l, keys, name)? else {
        return Ok(None);
    };
    let v = read_u64(mem, values.wrapping_add(header + 8 * i))?;
    Ok((v != 0).then_some(v))
}

/// The index of the entry whose key is the string `name` in the keys
/// object at `keys`, and its value when the table is combined.
fn find_key(
    mem: &dyn ReadMemory,
    l: &Layout,
    keys: u64,
    name: &str,
) -> PyResult<Option<(u64, Option<u64>)>> {
    let h = read_vec(mem, keys, DK_HEADER as usize)?;
    let log2_index_bytes = u64::from(u8_at(&h, 9).unwrap_or(0xff));
    let kind = u8_at(&h, 10).unwrap_or(0xff);
    let n = u64_at(&h, 24).unwrap_or(u64::MAX);
    if log2_index_bytes > 24 || n > MAX_ENTRIES || kind > 2 {
        return Err(format!("dict keys at 0x{keys:x} look like garbage"));
    }
    // DICT_KEYS_GENERAL: (hash, key, value); UNICODE and SPLIT: (key, value).
    let (size, key_at) = if kind == 0 { (24, 8) } else { (16, 0) };
    let entries = keys.wrapping_add(DK_HEADER + (1 << log2_index_bytes));
    let raw = read_vec(mem, entries, (n * size) as usize)?;
    for i in 0..n {
        let key = u64_at(&raw, i * size + key_at).unwrap_or(0);
        if key == 0 {
            continue;
        }
        if read_unicode(mem, l, key).is_ok_and(|k| k == name) {
            let value = u64_at(&raw, i * size + key_at + 8).filter(|&v| v != 0);
            return Ok(Some((i, value)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::code::tests::{ascii_str, l311};
    use crate::python::layout::from_debug_offsets;
    use crate::python::layout::tests::debug_offsets_3_14;
    use crate::python::memory::SliceMemory;

    const TYPE: u64 = 0x1_0000;
    const KEYS: u64 = 0x2_0000;
    const OBJ: u64 = 0x3_0040;

    /// A type with managed dict (and inline values if `inline`), its cached
    /// keys a split table of `names`, strings at 0x5_0000 + 0x100 * i.
    fn world(l: &Layout, names: &[&str], inline: bool) -> SliceMemory {
        let mut mem = SliceMemory::new();
        let mut ty = vec![0u8; (l.type_size + CACHED_KEYS_AFTER_TYPE + 8) as usize];
        let flags = MANAGED_DICT | if inline { INLINE_VALUES } else { 0 };
        ty[TP_FLAGS as usize..][..8].copy_from_slice(&flags.to_le_bytes());
        ty[TP_BASICSIZE as usize..][..8].copy_from_slice(&16u64.to_le_bytes());
        let at = (l.type_size + CACHED_KEYS_AFTER_TYPE) as usize;
        ty[at..at + 8].copy_from_slice(&KEYS.to_le_bytes());
        mem.add(TYPE, ty);
        let mut k = vec![0u8; 32 + 8];
        k[9] = 3; // 8 index bytes
        k[10] = 2; // split
        k[24..32].copy_from_slice(&(names.len() as u64).to_le_bytes());
        for (i, n) in names.iter().enumerate() {
            let s = 0x5_0000 + 0x100 * i as u64;
            k.extend_from_slice(&s.to_le_bytes());
            k.extend_from_slice(&0u64.to_le_bytes());
            mem.add(s, ascii_str(l, n));
        }
        mem.add(KEYS, k);
        mem
    }

    fn object(l: &Layout, pre: [u64; 4]) -> Vec<u8> {
        let mut b: Vec<u8> = pre.iter().flat_map(|v| v.to_le_bytes()).collect();
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&TYPE.to_le_bytes());
        let _ = l;
        b
    }

    #[test]
    fn names_from_3_11_values_and_dicts() {
        let l = l311();
        let mut mem = world(&l, &["_target", "_name", "_args"], false);
        let values = 0x4_0000;
        mem.add(
            values,
            [0u64, 0x6_0000, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
        mem.add(OBJ - 32, object(&l, [values, 0, 0, 0]));
        assert_eq!(attribute(&mem, &l, OBJ, "_name").unwrap(), Some(0x6_0000));
        assert_eq!(attribute(&mem, &l, OBJ, "_nope").unwrap(), None);
        // Materialised: a split dict sharing the keys.
        let dict = 0x7_0000;
        let mut d = vec![0u8; 48];
        d[32..40].copy_from_slice(&KEYS.to_le_bytes());
        d[40..48].copy_from_slice(&values.to_le_bytes());
        mem.add(dict, d);
        mem.add(OBJ - 32, object(&l, [0, dict, 0, 0]));
        assert_eq!(attribute(&mem, &l, OBJ, "_name").unwrap(), Some(0x6_0000));
    }

    #[test]
    fn names_from_3_14_inline_values() {
        let l = from_debug_offsets(&debug_offsets_3_14()).unwrap();
        let mut mem = world(&l, &["_args", "_name"], true);
        let mut o = object(&l, [0, 0, 0, 0]);
        // Inline values at obj + 16: header (valid = 1), then the values.
        o.extend_from_slice(&[2, 2, 1, 1, 0, 0, 0, 0]);
        o.extend_from_slice(&0u64.to_le_bytes());
        o.extend_from_slice(&0x6_0000u64.to_le_bytes());
        mem.add(OBJ - 32, o.clone());
        assert_eq!(attribute(&mem, &l, OBJ, "_name").unwrap(), Some(0x6_0000));
        // Values no longer valid, no dict: nothing.
        o[32 + 16 + 3] = 0;
        mem.add(OBJ - 32, o);
        assert_eq!(attribute(&mem, &l, OBJ, "_name").unwrap(), None);
    }

    #[test]
    fn garbage_objects_are_errors() {
        let l = l311();
        let mut mem = world(&l, &["_name"], false);
        // Keys claiming a million entries.
        let mut k = vec![0u8; 40];
        k[10] = 2;
        k[24..32].copy_from_slice(&1_000_000u64.to_le_bytes());
        mem.add(KEYS, k);
        mem.add(OBJ - 32, object(&l, [0x4_0000, 0, 0, 0]));
        assert!(attribute(&mem, &l, OBJ, "_name")
            .unwrap_err()
            .contains("garbage"));
        assert!(attribute(&mem, &l, 0xdead_0000, "_name").is_err());
    }
}
