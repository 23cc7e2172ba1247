//! CPython's location table (`co_linetable`, 3.11+; Objects/locations.md):
//! a byte stream of entries, each covering 1 to 8 code units.
//!
//! The first byte of an entry has bit 7 set, the entry's code in bits 3–6
//! and its length minus one in bits 0–2. Codes 0–9: same line, one byte of
//! columns; 10–12: line + (code − 10), two bytes of columns; 13: a signed
//! varint line delta, no columns; 14: line delta, end-line delta and two
//! columns, all varints; 15: no location. Varints are 6-bit chunks, least
//! significant first, bit 6 meaning "more"; a signed varint keeps its sign
//! in bit 0.

/// Most entries decoded from one table (a code object's table has one per
/// 1–8 code units; 1 Mi entries is far past any real function).
const MAX_ENTRIES: usize = 1 << 20;

/// One address range of a code object and its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRange {
    /// First code unit.
    pub start: u32,
    /// One past the last code unit.
    pub end: u32,
    /// The source line, `None` for instructions without a location.
    pub line: Option<i32>,
}

/// A decoded location table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineTable {
    ranges: Vec<LineRange>,
    first_line: i32,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// The next byte if it continues the entry (bit 7 clear).
    fn cont(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        if b & 0x80 != 0 {
            return None;
        }
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u32> {
        let mut b = self.cont()?;
        let mut v = u32::from(b & 63);
        let mut shift = 0u32;
        while b & 64 != 0 {
            b = self.cont()?;
            shift += 6;
            if shift > 30 {
                return None;
            }
            v |= u32::from(b & 63) << shift;
        }
        Some(v)
    }

    fn svarint(&mut self) -> Option<i32> {
        let u = self.varint()?;
        let mag = (u >> 1) as i32;
        Some(if u & 1 != 0 { -mag } else { mag })
    }
}

impl LineTable {
    /// Decodes `table` for a code object whose first line is `first_line`.
    /// A malformed table is decoded up to the first bad entry.
    pub fn parse(table: &[u8], first_line: i32) -> LineTable {
        let mut ranges = Vec::new();
        let mut r = Reader {
            bytes: table,
            pos: 0,
        };
        let mut line = first_line;
        let mut addr: u32 = 0;
        while ranges.len() < MAX_ENTRIES {
            let Some(first) = r.byte() else { break };
            if first & 0x80 == 0 {
                break; // not the start of an entry: malformed
            }
            let code = (first >> 3) & 15;
            let len = u32::from(first & 7) + 1;
            let ok = match code {
                0..=9 => r.cont().map(|_| Some(line)),
                10..=12 => {
                    line = line.saturating_add(i32::from(code - 10));
                    r.cont().and_then(|_| r.cont()).map(|_| Some(line))
                }
                13 => r.svarint().map(|d| {
                    line = line.saturating_add(d);
                    Some(line)
                }),
                14 => {
                    let d = r.svarint();
                    let rest = r.varint().and(r.varint()).and(r.varint());
                    d.zip(rest).map(|(d, _)| {
                        line = line.saturating_add(d);
                        Some(line)
                    })
                }
                _ => Some(None),
            };
            let Some(l) = ok else { break };
            let Some(end) = addr.checked_add(len) else {
                break;
            };
            ranges.push(LineRange {
                start: addr,
                end,
                line: l,
            });
            addr = end;
        }
        LineTable { ranges, first_line }
    }

    /// The line of the instruction at code unit `lasti` (CPython's
    /// `PyCode_Addr2Line`: before the first instruction, the first line).
    pub fn line_at(&self, lasti: i64) -> Option<i32> {
        if lasti < 0 {
            return Some(self.first_line);
        }
        let i = self.ranges.partition_point(|r| i64::from(r.end) <= lasti);
        let r = self.ranges.get(i)?;
        (i64::from(r.start) <= lasti).then_some(r.line).flatten()
    }

    /// The decoded ranges.
    pub fn ranges(&self) -> &[LineRange] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `co_linetable` of a 3.11 function with a list comprehension and a
    /// two-line return, and what `co_lines()` says of it (byte offsets,
    /// halved here to code units).
    #[test]
    fn decodes_a_real_3_11_table() {
        let table = hex(
            "8000d80809884189058041d80708f000010522d80c21d00c219d05986199089c08d00c21d10c21d40c218801d80c0dd80c0df003010c0ff00001050f",
        );
        let expected = [
            (0, 2, 2),
            (2, 4, 3),
            (4, 6, 3),
            (6, 10, 3),
            (10, 12, 3),
            (12, 14, 4),
            (14, 16, 4),
            (16, 18, 5),
            (18, 20, 5),
            (20, 32, 5),
            (32, 34, 5),
            (34, 38, 5),
            (38, 48, 5),
            (48, 50, 5),
            (50, 54, 5),
            (54, 64, 5),
            (64, 66, 5),
            (66, 68, 6),
            (68, 70, 7),
            (70, 72, 6),
            (72, 74, 6),
        ];
        let t = LineTable::parse(&table, 2);
        for (start, end, line) in expected {
            for b in (start..end).step_by(2) {
                assert_eq!(t.line_at(b / 2), Some(line), "byte offset {b}");
            }
        }
        assert_eq!(t.line_at(-1), Some(2));
        assert_eq!(t.line_at(1000), None);
    }

    #[test]
    fn every_entry_form() {
        // 13: line +3 (svarint 6); 14: line -1 (svarint 3), end delta, cols;
        // 15: no location; 10..12: +2 with two column bytes.
        let table = [
            0x80 | (13 << 3),
            6,
            0x80 | (14 << 3) | 1,
            3,
            0,
            1,
            2,
            0x80 | (15 << 3),
            0x80 | (12 << 3),
            5,
            6,
        ];
        let t = LineTable::parse(&table, 10);
        assert_eq!(t.line_at(0), Some(13));
        assert_eq!(t.line_at(1), Some(12));
        assert_eq!(t.line_at(2), Some(12));
        assert_eq!(t.line_at(3), None);
        assert_eq!(t.line_at(4), Some(14));
        // A long varint: line delta 64 = svarint 128 = [0x40 | 0, 2].
        let t = LineTable::parse(&[0x80 | (13 << 3), 0x40, 2], 1);
        assert_eq!(t.line_at(0), Some(65));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for n in 0..2000usize {
            let bytes: Vec<u8> = (0..n % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let t = LineTable::parse(&bytes, i32::MAX - 3);
            let _ = t.line_at((n as i64) - 5);
            assert!(t.ranges().len() <= bytes.len());
        }
        // Runaway varints stop.
        let t = LineTable::parse(
            &[0x80 | (13 << 3), 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 1],
            1,
        );
        assert!(t.ranges().is_empty());
    }
}
