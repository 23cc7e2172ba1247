//! Memory of the target as the Python readers see it: the engine's
//! [`ReadMemory`] trait (with its `process_vm_readv` and in-memory
//! implementations, from [`crate::memory`]), and a page cache that makes the short dependent reads of a frame walk cheap during
//! the freeze.

use std::cell::RefCell;
use std::collections::HashMap;

/// Result of the Python readers: the error is a sentence for the stack's note.
pub type PyResult<T> = std::result::Result<T, String>;

// The engine's one memory trait, its process and byte-slice readers live in
// `crate::memory`; re-exported here where the Python readers always found them.
pub use crate::memory::{ProcessMemory, ReadMemory, SliceMemory, PAGE};

/// A read-through cache of whole pages over another reader, for one walk:
/// the dozens of small dependent reads of a frame chain (thread states,
/// frames next to each other on the data stack) cost one system call per
/// distinct page. Bounded: past `max_pages` it reads through uncached.
pub struct PageCache<'a> {
    inner: &'a dyn ReadMemory,
    pages: RefCell<HashMap<u64, Option<Box<[u8]>>>>,
    max_pages: usize,
    /// Pages read ahead in one call ([`PageCache::prefetch`]), sorted:
    /// (page, offset in `bulk`).
    ahead: Vec<(u64, usize)>,
    bulk: Vec<u8>,
}

impl std::fmt::Debug for PageCache<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("pages", &self.pages.borrow().len())
            .finish()
    }
}

impl<'a> PageCache<'a> {
    /// A cache over `inner` holding at most `max_pages` pages.
    pub fn new(inner: &'a dyn ReadMemory, max_pages: usize) -> PageCache<'a> {
        PageCache {
            inner,
            pages: RefCell::new(HashMap::new()),
            max_pages,
            ahead: Vec::new(),
            bulk: Vec::new(),
        }
    }

    /// Reads `pages` (page addresses) ahead in one vectored read, into
    /// `buf` (reused: pass a buffer written before the freeze, so that no
    /// page of ours faults in during it). Pages past the first unreadable
    /// one are left to be read on demand.
    pub fn prefetch(&mut self, pages: &[u64], mut buf: Vec<u8>) {
        let pages = pages.get(..self.max_pages.min(pages.len())).unwrap_or(&[]);
        buf.resize(pages.len() * PAGE as usize, 0);
        let mut done = 0;
        // IOV_MAX is 1024 on Linux: one call per 1024 pages.
        while done < pages.len() {
            let end = (done + 1024).min(pages.len());
            let (Some(chunk), Some(out)) = (
                pages.get(done..end),
                buf.get_mut(done * PAGE as usize..end * PAGE as usize),
            ) else {
                break;
            };
            let n = self.inner.read_pages(chunk, out);
            done += n;
            if n < chunk.len() {
                break;
            }
        }
        self.ahead = pages
            .iter()
            .take(done)
            .enumerate()
            .map(|(i, &p)| (p, i * PAGE as usize))
            .collect();
        self.ahead.sort_unstable();
        self.bulk = buf;
    }

    /// The pages read so far (for a later [`PageCache::prefetch`]).
    pub fn page_list(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .pages
            .borrow()
            .iter()
            .filter(|(_, b)| b.is_some())
            .map(|(p, _)| *p)
            .chain(self.ahead.iter().map(|(p, _)| *p))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The buffer of read-ahead pages, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.bulk
    }

    /// Pages read so far (readable or not), read ahead included.
    pub fn pages(&self) -> usize {
        self.pages.borrow().len() + self.ahead.len()
    }

    /// Copies from the page at `page` (aligned) into `dst` starting at `off`
    /// in the page; `None` when the page is not cached and cannot be (cache
    /// full, or the page is not readable as a whole): read through then.
    fn copy_from_page(&self, page: u64, off: usize, dst: &mut [u8]) -> Option<usize> {
        if let Ok(i) = self.ahead.binary_search_by_key(&page, |(p, _)| *p) {
            let at = self.ahead.get(i).map_or(0, |(_, at)| *at);
            let src = self.bulk.get(at + off..at + PAGE as usize).unwrap_or(&[]);
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            return Some(n);
        }
        let mut pages = self.pages.borrow_mut();
        if !pages.contains_key(&page) {
            if pages.len() >= self.max_pages {
                return None;
            }
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            let got = match self.inner.read(page, &mut buf) {
                Ok(n) if n == buf.len() => Some(buf),
                _ => None,
            };
            pages.insert(page, got);
        }
        let b = pages.get(&page)?.as_ref()?;
        let src = b.get(off..).unwrap_or(&[]);
        let n = src.len().min(dst.len());
        if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        Some(n)
    }
}

impl ReadMemory for PageCache<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> PyResult<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let Some(at) = addr.checked_add(done as u64) else {
                break;
            };
            let page = at & !(PAGE - 1);
            let off = (at - page) as usize;
            let Some(dst) = buf.get_mut(done..) else {
                break;
            };
            match self.copy_from_page(page, off, dst) {
                Some(n) if n > 0 => done += n,
                // Not cacheable (a page readable only in part, as memory
                // made of byte regions can be; or the cache is full): read
                // the rest through.
                _ => {
                    return match self.inner.read(at, dst) {
                        Ok(n) => Ok(done + n),
                        Err(_) if done > 0 => Ok(done),
                        Err(e) => Err(e),
                    }
                }
            }
        }
        if done == 0 && !buf.is_empty() {
            return Err(format!("address 0x{addr:x} is not readable"));
        }
        Ok(done)
    }
}

/// Reads exactly `buf.len()` bytes at `addr`.
pub fn read_exact(mem: &dyn ReadMemory, addr: u64, buf: &mut [u8]) -> PyResult<()> {
    let n = mem.read(addr, buf)?;
    if n < buf.len() {
        return Err(format!(
            "only {n} of {} bytes readable at 0x{addr:x}",
            buf.len()
        ));
    }
    Ok(())
}

/// Reads `len` bytes at `addr` (`len` bounded by the caller).
pub fn read_vec(mem: &dyn ReadMemory, addr: u64, len: usize) -> PyResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_exact(mem, addr, &mut buf)?;
    Ok(buf)
}

/// Reads a little-endian `u64` at `addr`.
pub fn read_u64(mem: &dyn ReadMemory, addr: u64) -> PyResult<u64> {
    let mut b = [0u8; 8];
    read_exact(mem, addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A little-endian `u64` at `off` of `bytes`, if in range.
pub fn u64_at(bytes: &[u8], off: u64) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    let b: [u8; 8] = bytes.get(off..off.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// A little-endian `u32` at `off` of `bytes`, if in range.
pub fn u32_at(bytes: &[u8], off: u64) -> Option<u32> {
    let off = usize::try_from(off).ok()?;
    let b: [u8; 4] = bytes.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// The byte at `off` of `bytes`, if in range.
pub fn u8_at(bytes: &[u8], off: u64) -> Option<u8> {
    bytes.get(usize::try_from(off).ok()?).copied()
}

/// Reads a NUL-terminated string of at most `max` bytes at `addr`.
pub fn read_c_string(mem: &dyn ReadMemory, addr: u64, max: usize) -> PyResult<String> {
    let mut buf = vec![0u8; max];
    let n = mem.read(addr, &mut buf)?;
    let bytes = buf.get(..n).unwrap_or(&[]);
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("no string end within {max} bytes at 0x{addr:x}"))?;
    Ok(String::from_utf8_lossy(bytes.get(..end).unwrap_or(&[])).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_memory_reads_and_refuses() {
        let mut m = SliceMemory::new();
        m.add(0x1000, vec![1, 2, 3, 4]);
        let mut b = [0u8; 8];
        assert_eq!(m.read(0x1001, &mut b).unwrap(), 3);
        assert_eq!(&b[..3], &[2, 3, 4]);
        assert!(m.read(0x1004, &mut b).is_err());
        assert!(m.read(0xfff, &mut b).is_err());
        assert!(read_exact(&m, 0x1000, &mut b).is_err());
        assert_eq!(read_u64(&m, 0x1000).ok(), None);
    }

    #[test]
    fn page_cache_spans_pages_and_caches() {
        let mut m = SliceMemory::new();
        let bytes: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8).collect();
        m.add(0x10000, bytes.clone());
        let c = PageCache::new(&m, 8);
        let mut b = vec![0u8; 100];
        assert_eq!(c.read(0x10000 + PAGE - 50, &mut b).unwrap(), 100);
        let o = (PAGE - 50) as usize;
        assert_eq!(&b[..], &bytes[o..o + 100]);
        assert_eq!(c.pages(), 2);
        // The end of readable memory: short read, then an error.
        let mut big = vec![0u8; 2 * PAGE as usize];
        assert_eq!(c.read(0x10000 + 2 * PAGE, &mut big).unwrap(), PAGE as usize);
        assert!(c.read(0x10000 + 3 * PAGE, &mut b).is_err());
        // Full: reads go through.
        let tiny = PageCache::new(&m, 0);
        assert_eq!(tiny.read(0x10010, &mut b).unwrap(), 100);
        assert_eq!(&b[..], &bytes[0x10..0x10 + 100]);
    }

    #[test]
    fn prefetched_pages_serve_reads_and_stop_at_a_hole() {
        let mut m = SliceMemory::new();
        m.add(0x10000, vec![7u8; 2 * PAGE as usize]);
        m.add(0x20000, vec![9u8; PAGE as usize]);
        let mut c = PageCache::new(&m, 16);
        // 0x15000 is unreadable: 0x20000 after it is left for later.
        c.prefetch(&[0x10000, 0x11000, 0x15000, 0x20000], Vec::new());
        assert_eq!(c.pages(), 2);
        let mut b = [0u8; 16];
        assert_eq!(c.read(0x10ff8, &mut b).unwrap(), 16);
        assert_eq!(b, [7u8; 16]);
        assert_eq!(c.read(0x20000, &mut b).unwrap(), 16);
        assert_eq!(b, [9u8; 16]);
        assert_eq!(c.page_list(), vec![0x10000, 0x11000, 0x20000]);
        assert!(c.read(0x15000, &mut b).is_err());
        assert_eq!(c.into_buffer().len(), 4 * PAGE as usize);
    }

    #[test]
    fn c_strings_are_bounded() {
        let mut m = SliceMemory::new();
        m.add(0x2000, b"code\0junk".to_vec());
        m.add(0x3000, vec![b'a'; 100]);
        assert_eq!(read_c_string(&m, 0x2000, 16).unwrap(), "code");
        assert!(read_c_string(&m, 0x3000, 16).is_err());
    }
}
