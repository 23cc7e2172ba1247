//! Little-endian building and bounds-checked reading of the file's bytes.

use super::ReadError;

/// A growing file: values appended little-endian, locations patched later.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub(crate) buf: Vec<u8>,
}

impl Out {
    pub(crate) fn pos(&self) -> u32 {
        // Files past 4 GiB cannot be addressed by a 32-bit RVA; the writer
        // caps what it puts in (stacks, images, maps) far below that.
        u32::try_from(self.buf.len()).unwrap_or(u32::MAX)
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Pads to a multiple of 8.
    pub(crate) fn align(&mut self) {
        while self.buf.len() % 8 != 0 {
            self.buf.push(0);
        }
    }
    pub(crate) fn patch_u32(&mut self, at: u32, v: u32) {
        if let Some(d) = self.buf.get_mut(at as usize..at as usize + 4) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// A `MINIDUMP_STRING` (length in bytes, UTF-16LE, NUL); returns its RVA.
    pub(crate) fn string(&mut self, s: &str) -> u32 {
        self.align();
        let at = self.pos();
        let units: Vec<u16> = s.encode_utf16().collect();
        self.u32((units.len() * 2) as u32);
        for u in units {
            self.u16(u);
        }
        self.u16(0);
        at
    }
}

/// The file being read: every access checked against its length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct In<'a> {
    pub(crate) data: &'a [u8],
}

impl<'a> In<'a> {
    pub(crate) fn slice(&self, at: u64, len: u64, what: &str) -> Result<&'a [u8], ReadError> {
        let start = usize::try_from(at).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(len).ok()?));
        start
            .zip(end)
            .and_then(|(s, e)| self.data.get(s..e))
            .ok_or_else(|| {
                ReadError(format!(
                    "{what} (0x{len:x} bytes at 0x{at:x}) lies past the end of the file (0x{:x} bytes): truncated?",
                    self.data.len()
                ))
            })
    }
    pub(crate) fn u16(&self, at: u64, what: &str) -> Result<u16, ReadError> {
        let b = self.slice(at, 2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&self, at: u64, what: &str) -> Result<u32, ReadError> {
        let b = self.slice(at, 4, what)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }
    pub(crate) fn u64(&self, at: u64, what: &str) -> Result<u64, ReadError> {
        let b = self.slice(at, 8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A `MINIDUMP_STRING` at `rva` (at most 64 KiB of UTF-16).
    pub(crate) fn string(&self, rva: u32, what: &str) -> Result<String, ReadError> {
        let len = self.u32(u64::from(rva), what)?;
        if len > 1 << 16 || len % 2 != 0 {
            return Err(ReadError(format!("{what}: bad string length {len}")));
        }
        let b = self.slice(u64::from(rva) + 4, u64::from(len), what)?;
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(String::from_utf16_lossy(&units))
    }
}
