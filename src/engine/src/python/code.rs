//! Code objects, decoded after the target runs again: name, qualified name,
//! file and line table. Code objects are immutable, so each is decoded once
//! and cached; a cached entry is reused only while the object's pointers to
//! its name, file and table are unchanged (a freed code object whose address
//! was reused reads differently).

use std::collections::HashMap;
use std::sync::Arc;

use super::layout::Layout;
use super::linetable::LineTable;
use super::memory::{read_c_string, read_vec, u32_at, u64_at, PyResult, ReadMemory};

/// Most characters of a name or file name decoded.
pub const MAX_STRING_CHARS: u64 = 4096;
/// Largest line table read (1 MiB).
pub const MAX_LINETABLE: u64 = 1 << 20;
/// Most code objects cached before the cache is emptied.
const MAX_CACHED: usize = 1 << 16;

/// What a code object says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_name`.
    pub name: String,
    /// `co_qualname` (`Class.method`, `outer.<locals>.inner`).
    pub qualname: String,
    /// `co_filename`.
    pub filename: String,
    /// `co_firstlineno`.
    pub first_line: i32,
    /// The decoded `co_linetable`.
    pub lines: LineTable,
}

/// The fields that identify a code object's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    ob_type: u64,
    filename: u64,
    name: u64,
    qualname: u64,
    linetable: u64,
    first_line: u32,
}

/// Decoded code objects by address, and which type objects are `code`.
#[derive(Debug, Default)]
pub struct CodeCache {
    codes: HashMap<u64, (Identity, Arc<CodeInfo>)>,
    code_types: HashMap<u64, bool>,
    /// Decodes done (cache misses), for tests and timings.
    pub decoded: u64,
}

/// Decodes a `str` object at `addr` (compact strings, as code objects hold).
pub fn read_unicode(mem: &dyn ReadMemory, l: &Layout, addr: u64) -> PyResult<String> {
    let head = read_vec(mem, addr, l.ascii_size as usize)?;
    let state = u32_at(&head, l.unicode_state).ok_or("string header truncated")?;
    let length = u64_at(&head, l.unicode_length).ok_or("string header truncated")?;
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact {
        return Err(format!("string at 0x{addr:x} is not compact"));
    }
    if length > i64::MAX as u64 {
        return Err(format!("string at 0x{addr:x} has a negative length"));
    }
    let chars = length.min(MAX_STRING_CHARS);
    let (data, width) = if ascii {
        (addr.checked_add(l.ascii_size), 1u64)
    } else {
        (addr.checked_add(l.compact_size), u64::from(kind))
    };
    let data = data.ok_or("string address overflows")?;
    if !matches!(width, 1 | 2 | 4) {
        return Err(format!("string at 0x{addr:x} has kind {kind}"));
    }
    let raw = read_vec(mem, data, (chars * width) as usize)?;
    let mut s: String = match width {
        1 if ascii => raw
            .iter()
            .map(|&b| if b < 128 { b as char } else { '\u{fffd}' })
            .collect(),
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .map(|u| char::from_u32(u32::from(u)).unwrap_or('\u{fffd}'))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .map(|u| char::from_u32(u).unwrap_or('\u{fffd}'))
            .collect(),
    };
    if length > chars {
        s.push('…');
    }
    Ok(s)
}

/// Reads a `bytes` object's contents (at most `max` bytes).
pub fn read_bytes_object(
    mem: &dyn ReadMemory,
    l: &Layout,
    addr: u64,
    max: u64,
) -> PyResult<Vec<u8>> {
    let size = super::memory::read_u64(mem, addr.wrapping_add(l.bytes_size))?;
    if size > max {
        return Err(format!("bytes object at 0x{addr:x} claims {size} bytes"));
    }
    read_vec(mem, addr.wrapping_add(l.bytes_sval), size as usize)
}

impl CodeCache {
    /// An empty cache.
    pub fn new() -> CodeCache {
        CodeCache::default()
    }

    /// Code objects cached.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Whether the type object at `ty` is `code` (its `tp_name`), cached.
    fn is_code_type(&mut self, mem: &dyn ReadMemory, l: &Layout, ty: u64) -> bool {
        if let Some(&known) = self.code_types.get(&ty) {
            return known;
        }
        let is = super::memory::read_u64(mem, ty.wrapping_add(l.tp_name))
            .and_then(|p| read_c_string(mem, p, 64))
            .is_ok_and(|name| name == "code");
        if self.code_types.len() < 1024 {
            self.code_types.insert(ty, is);
        }
        is
    }

    /// The code object at `addr`: from the cache if its identity is
    /// unchanged, else decoded from `mem`. `Ok(None)`: not a code object
    /// (a frame of a non-Python executable).
    pub fn get(
        &mut self,
        mem: &dyn ReadMemory,
        l: &Layout,
        addr: u64,
    ) -> PyResult<Option<Arc<CodeInfo>>> {
        let head = read_vec(mem, addr, l.code_size.min(4096) as usize)?;
        let field = |o: u64| u64_at(&head, o).ok_or_else(|| "code object truncated".to_string());
        let id = Identity {
            ob_type: field(l.ob_type)?,
            filename: field(l.code_filename)?,
            name: field(l.code_name)?,
            qualname: field(l.code_qualname)?,
            linetable: field(l.code_linetable)?,
            first_line: u32_at(&head, l.code_firstlineno).ok_or("code object truncated")?,
        };
        if let Some((known, info)) = self.codes.get(&addr) {
            if *known == id {
                return Ok(Some(info.clone()));
            }
        }
        if !self.is_code_type(mem, l, id.ob_type) {
            return Ok(None);
        }
        let filename = read_unicode(mem, l, id.filename)?;
        let name = read_unicode(mem, l, id.name)?;
        let qualname = read_unicode(mem, l, id.qualname).unwrap_or_else(|_| name.clone());
        let first_line = id.first_line as i32;
        let table = read_bytes_object(mem, l, id.linetable, MAX_LINETABLE).unwrap_or_default();
        let info = Arc::new(CodeInfo {
            name,
            qualname,
            filename,
            first_line,
            lines: LineTable::parse(&table, first_line),
        });
        self.decoded += 1;
        if self.codes.len() >= MAX_CACHED {
            self.codes.clear();
        }
        self.codes.insert(addr, (id, info.clone()));
        Ok(Some(info))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::python::layout::{fixed_layout, Version};
    use crate::python::memory::SliceMemory;

    pub(crate) fn l311() -> Layout {
        fixed_layout(Version { hex: 0x030b07f0 }).unwrap()
    }

    /// A compact ASCII `str` object as 3.11 lays it out.
    pub(crate) fn ascii_str(l: &Layout, s: &str) -> Vec<u8> {
        let mut b = vec![0u8; l.ascii_size as usize];
        b[l.unicode_length as usize..][..8].copy_from_slice(&(s.len() as u64).to_le_bytes());
        let state: u32 = (1 << 2) | (1 << 5) | (1 << 6); // kind 1, compact, ascii
        b[l.unicode_state as usize..][..4].copy_from_slice(&state.to_le_bytes());
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        b
    }

    pub(crate) fn bytes_obj(l: &Layout, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; l.bytes_sval as usize];
        b[l.bytes_size as usize..][..8].copy_from_slice(&(data.len() as u64).to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    /// A code object at `at` with its strings and table after it; the type
    /// object `code` at 0x9000.
    pub(crate) fn code_object(
        mem: &mut SliceMemory,
        l: &Layout,
        at: u64,
        name: &str,
        file: &str,
        first: u32,
    ) {
        let mut c = vec![0u8; l.code_size as usize];
        let put = |c: &mut Vec<u8>, off: u64, v: u64| {
            c[off as usize..][..8].copy_from_slice(&v.to_le_bytes())
        };
        let (n, q, f, t) = (at + 0x1000, at + 0x1100, at + 0x1200, at + 0x1300);
        put(&mut c, l.ob_type, 0x9000);
        put(&mut c, l.code_name, n);
        put(&mut c, l.code_qualname, q);
        put(&mut c, l.code_filename, f);
        put(&mut c, l.code_linetable, t);
        c[l.code_firstlineno as usize..][..4].copy_from_slice(&first.to_le_bytes());
        mem.add(at, c);
        mem.add(n, ascii_str(l, name));
        mem.add(q, ascii_str(l, &format!("Outer.{name}")));
        mem.add(f, ascii_str(l, file));
        // Line first+0 for 2 units, then +3 for 8 units.
        mem.add(t, bytes_obj(l, &[0x80 | 1, 0, 0x80 | (13 << 3) | 7, 6]));
        let mut ty = vec![0u8; 64];
        ty[l.tp_name as usize..][..8].copy_from_slice(&0x9800u64.to_le_bytes());
        mem.add(0x9000, ty);
        mem.add(0x9800, b"code\0".to_vec());
    }

    #[test]
    fn decodes_and_caches_a_code_object() {
        let l = l311();
        let mut mem = SliceMemory::new();
        code_object(&mut mem, &l, 0x10000, "parse_order", "/srv/orders.py", 7);
        let mut cache = CodeCache::new();
        let c = cache.get(&mem, &l, 0x10000).unwrap().unwrap();
        assert_eq!(c.name, "parse_order");
        assert_eq!(c.qualname, "Outer.parse_order");
        assert_eq!(c.filename, "/srv/orders.py");
        assert_eq!(c.lines.line_at(0), Some(7));
        assert_eq!(c.lines.line_at(5), Some(10));
        let _ = cache.get(&mem, &l, 0x10000).unwrap().unwrap();
        assert_eq!(cache.decoded, 1);
        // Same address, another object (its name elsewhere): decoded again.
        code_object(&mut mem, &l, 0x40000, "other", "/srv/orders.py", 7);
        let mut moved = read_vec(&mem, 0x40000, l.code_size as usize).unwrap();
        moved[l.code_name as usize..][..8].copy_from_slice(&(0x40000u64 + 0x1000).to_le_bytes());
        mem.add(0x10000, moved);
        let c = cache.get(&mem, &l, 0x10000).unwrap().unwrap();
        assert_eq!(c.name, "other");
    }

    #[test]
    fn non_code_objects_and_garbage() {
        let l = l311();
        let mut mem = SliceMemory::new();
        code_object(&mut mem, &l, 0x10000, "f", "x.py", 1);
        // A type named something else.
        mem.add(0x9800, b"dict\0".to_vec());
        let mut cache = CodeCache::new();
        assert_eq!(cache.get(&mem, &l, 0x10000).unwrap(), None);
        // Unreadable.
        assert!(cache.get(&mem, &l, 0x500000).is_err());
        // A string claiming a huge length is cut, and one that is not compact refused.
        let mut s = ascii_str(&l, "abc");
        s[l.unicode_length as usize..][..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        mem.add(0x70000, s);
        assert!(read_unicode(&mem, &l, 0x70000).is_err()); // only 4 bytes follow
        let mut s = ascii_str(&l, "abc");
        s[l.unicode_state as usize] = 0;
        mem.add(0x71000, s);
        assert!(read_unicode(&mem, &l, 0x71000)
            .unwrap_err()
            .contains("compact"));
        // UCS2.
        let mut s = vec![0u8; l.compact_size as usize];
        s[l.unicode_length as usize..][..8].copy_from_slice(&2u64.to_le_bytes());
        let state: u32 = (2 << 2) | (1 << 5);
        s[l.unicode_state as usize..][..4].copy_from_slice(&state.to_le_bytes());
        s.extend_from_slice(&[0x3b, 0x04, 0x41, 0x00]);
        mem.add(0x72000, s);
        assert_eq!(read_unicode(&mem, &l, 0x72000).unwrap(), "лA");
        // A bytes object claiming too much.
        let mut b = bytes_obj(&l, b"xy");
        b[l.bytes_size as usize..][..8].copy_from_slice(&u64::MAX.to_le_bytes());
        mem.add(0x73000, b);
        assert!(read_bytes_object(&mem, &l, 0x73000, MAX_LINETABLE).is_err());
    }
}
