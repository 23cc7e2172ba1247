//! Files of the target mapped into our memory, and the DWARF context built
//! over them. The only `unsafe` of the symbolizer lives here:
//!
//! - mapping a file read-only (`mmap`): the bytes could change under us if
//!   someone rewrote the file in place (a truncation would raise SIGBUS in the
//!   watcher, never in the target) — the same trade-off gdb and eu-stack make;
//! - extending the lifetime of mapped bytes to `'static` for the
//!   `addr2line::Context` stored next to them: [`DwarfContext`] owns the
//!   mappings and drops the context first, and only owned data ever leaves
//!   this module.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use gimli::{EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

/// Largest file we map (4 GiB): bigger is not an ELF file we can use.
const MAX_FILE: u64 = 4 << 30;
/// Largest section we decompress (1 GiB), whatever its header claims.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// A file's bytes, mapped privately and read-only (or owned, for images read
/// from the target's memory such as the vDSO).
#[derive(Debug)]
pub struct MappedFile {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Map(memmap2::Mmap),
    Owned(Box<[u8]>),
}

impl MappedFile {
    /// Maps `file` read-only.
    pub fn map(file: &File) -> std::io::Result<MappedFile> {
        let len = file.metadata()?.len();
        if len > MAX_FILE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("file of {len} bytes is too big to be a module"),
            ));
        }
        if len == 0 {
            return Ok(MappedFile::owned(Vec::new()));
        }
        // SAFETY: a private, read-only mapping of a file we opened read-only.
        // Nothing in this process writes it. Another process rewriting it in
        // place could change the bytes we parse (every parser we use treats the
        // data as untrusted) or, by truncating it, fault this process: the
        // documented limitation of mapping, shared with gdb and eu-stack.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        Ok(MappedFile {
            inner: Inner::Map(map),
        })
    }

    /// Wraps bytes we own (an image copied out of the target's memory).
    pub fn owned(bytes: Vec<u8>) -> MappedFile {
        MappedFile {
            inner: Inner::Owned(bytes.into_boxed_slice()),
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Map(m) => m,
            Inner::Owned(b) => b,
        }
    }
}

type Slice = EndianSlice<'static, RunTimeEndian>;

/// One (possibly inlined) function found at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFrame {
    /// Demangled function name, if DWARF names one.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// Most compilation units whose context is kept at once.
const MAX_UNIT_CONTEXTS: usize = 4096;
/// Most `.debug_aranges` entries indexed.
const MAX_ARANGES: usize = 4 << 20;

/// DWARF of one module, looked up one compilation unit at a time.
///
/// `addr2line::Context` parses the header, abbreviations and line program
/// header of every unit up front: for libc's 4 000 units that alone costs as
/// much as everything else of a cold dump. So `.debug_aranges` is indexed
/// first, and a context is built (and cached) only for the units that
/// addresses fall in, over a `.debug_info` cut down to that unit; a context
/// over every unit is the fallback for addresses `.debug_aranges` misses.
pub struct DwarfContext {
    // Declared first: dropped before the bytes they point into.
    units: RefCell<HashMap<usize, UnitContext>>,
    full: OnceCell<Option<addr2line::Context<Slice>>>,
    sup: Option<Arc<gimli::Dwarf<Slice>>>,
    sections: Vec<(gimli::SectionId, &'static [u8])>,
    /// (start, end, unit offset in `.debug_info`), sorted by start.
    aranges: Vec<(u64, u64, usize)>,
    endian: RunTimeEndian,
    _decompressed: Vec<Box<[u8]>>,
    _files: Vec<Arc<MappedFile>>,
}

/// What looking up addresses of one compilation unit takes.
enum UnitContext {
    /// A context over this unit alone.
    Own(Box<addr2line::Context<Slice>>),
    /// It refers to other units: use the context over every unit.
    NeedsAll,
    /// Unreadable: nothing to find there.
    Broken,
}

/// Whether the abbreviation table at `offset` of `.debug_abbrev` uses a form
/// that refers outside its unit. `None` if the table is malformed.
fn refers_across_units(data: &[u8], offset: usize) -> Option<bool> {
    fn uleb(data: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *data.get(*pos)?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut pos = offset;
    // Bounded by the section's size: every step consumes at least one byte.
    loop {
        let code = uleb(data, &mut pos)?;
        if code == 0 {
            return Some(false);
        }
        let _tag = uleb(data, &mut pos)?;
        pos = pos.checked_add(1)?; // DW_CHILDREN_*
        loop {
            let name = uleb(data, &mut pos)?;
            let form = uleb(data, &mut pos)?;
            if name == 0 && form == 0 {
                break;
            }
            let form = gimli::DwForm(u16::try_from(form).ok()?);
            if form == gimli::DW_FORM_implicit_const {
                uleb(data, &mut pos)?; // an SLEB128: same encoding length
            }
            if matches!(
                form,
                gimli::DW_FORM_ref_addr
                    | gimli::DW_FORM_GNU_ref_alt
                    | gimli::DW_FORM_ref_sup4
                    | gimli::DW_FORM_ref_sup8
            ) {
                return Some(true);
            }
        }
    }
}

impl std::fmt::Debug for DwarfContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfContext")
            .field("aranges", &self.aranges.len())
            .field("units", &self.units.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Bytes handed out with a `'static` lifetime, owned by [`Keeper`].
struct Keeper {
    decompressed: Vec<Box<[u8]>>,
    files: Vec<Arc<MappedFile>>,
}

impl Keeper {
    fn file(&mut self, file: &Arc<MappedFile>) -> &'static [u8] {
        self.files.push(file.clone());
        let bytes = file.bytes();
        // SAFETY: the bytes belong to a mapping (or boxed slice) held by the
        // `Arc` just pushed; its address never changes while any `Arc` lives.
        // The keeper's `files` move into the `DwarfContext` whose `ctx` is the
        // only holder of the extended slices and is dropped before them; on
        // failure paths the slices are dropped with the parsing locals before
        // the keeper (see `DwarfContext::load`).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) }
    }

    fn owned(&mut self, data: Vec<u8>) -> &'static [u8] {
        let boxed = data.into_boxed_slice();
        let (ptr, len) = (boxed.as_ptr(), boxed.len());
        self.decompressed.push(boxed);
        // SAFETY: the heap allocation of the box just pushed does not move when
        // the box (or the vector holding it) moves, and lives as long as the
        // keeper, whose contents outlive every use as argued in `file`.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

impl DwarfContext {
    /// Prepares lookups in the DWARF sections of `debug` (the separate debug
    /// file, or the module itself). `sup` is a supplementary file
    /// (`.gnu_debugaltlink`), if found. `None` when there is no usable DWARF.
    pub fn load(debug: &Arc<MappedFile>, sup: Option<&Arc<MappedFile>>) -> Option<DwarfContext> {
        let mut keeper = Keeper {
            decompressed: Vec::new(),
            files: Vec::new(),
        };
        let (sections, endian, sup_dwarf) = {
            let data = keeper.file(debug);
            let obj = object::File::parse(data).ok()?;
            obj.section_by_name(".debug_info")?;
            let endian = if obj.is_little_endian() {
                RunTimeEndian::Little
            } else {
                RunTimeEndian::Big
            };
            let sections = load_sections(&obj, &mut keeper);
            let mut sup_dwarf = None;
            if let Some(sup) = sup {
                let sup_data = keeper.file(sup);
                if let Ok(sup_obj) = object::File::parse(sup_data) {
                    let sup_sections = load_sections(&sup_obj, &mut keeper);
                    sup_dwarf = dwarf_from(&sup_sections, endian, None).map(Arc::new);
                }
            }
            (sections, endian, sup_dwarf)
        };
        let aranges = index_aranges(&sections, endian);
        Some(DwarfContext {
            units: RefCell::new(HashMap::new()),
            full: OnceCell::new(),
            sup: sup_dwarf,
            sections,
            aranges,
            endian,
            _decompressed: keeper.decompressed,
            _files: keeper.files,
        })
    }

    fn section(&self, id: gimli::SectionId) -> &'static [u8] {
        self.sections
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| *b)
            .unwrap_or(&[])
    }

    /// The compilation unit covering `probe`, per `.debug_aranges`.
    fn unit_for(&self, probe: u64) -> Option<usize> {
        let i = self.aranges.partition_point(|r| r.0 <= probe);
        // Ranges may nest or overlap: look back a little.
        self.aranges[..i]
            .iter()
            .rev()
            .take(16)
            .find(|r| probe < r.1)
            .map(|r| r.2)
    }

    /// A context over the one unit at `offset` of `.debug_info`.
    fn unit_context(&self, offset: usize) -> UnitContext {
        let info = self.section(gimli::SectionId::DebugInfo);
        let whole = gimli::DebugInfo::new(info, self.endian);
        let Ok(header) = whole.header_from_offset(gimli::DebugInfoOffset(offset)) else {
            return UnitContext::Broken;
        };
        // References across units (`DW_FORM_ref_addr`: rustc's inlined
        // functions from other codegen units, LTO, dwz) need every unit.
        let abbrev = self.section(gimli::SectionId::DebugAbbrev);
        let Some(crosses_units) = refers_across_units(abbrev, header.debug_abbrev_offset().0)
        else {
            return UnitContext::Broken;
        };
        if crosses_units {
            return UnitContext::NeedsAll;
        }
        let Some(end) = offset.checked_add(header.length_including_self()) else {
            return UnitContext::Broken;
        };
        let Some(unit) = info.get(offset..end) else {
            return UnitContext::Broken;
        };
        let Some(mut dwarf) = dwarf_from(&self.sections, self.endian, Some(unit)) else {
            return UnitContext::Broken;
        };
        dwarf.sup = self.sup.clone();
        match addr2line::Context::from_dwarf(dwarf) {
            Ok(ctx) => UnitContext::Own(Box::new(ctx)),
            Err(_) => UnitContext::Broken,
        }
    }

    fn full_context(&self) -> Option<&addr2line::Context<Slice>> {
        self.full
            .get_or_init(|| {
                let mut dwarf = dwarf_from(&self.sections, self.endian, None)?;
                dwarf.sup = self.sup.clone();
                addr2line::Context::from_dwarf(dwarf).ok()
            })
            .as_ref()
    }

    /// Functions at `probe` (an address as stated in the ELF file), innermost
    /// inlined function first, each with its source location. Empty when
    /// DWARF knows nothing of the address.
    pub fn frames(&self, probe: u64, max: usize) -> Vec<SourceFrame> {
        if let Some(offset) = self.unit_for(probe) {
            let mut units = self.units.borrow_mut();
            if units.len() >= MAX_UNIT_CONTEXTS {
                units.clear();
            }
            let ctx = units
                .entry(offset)
                .or_insert_with(|| self.unit_context(offset));
            match ctx {
                UnitContext::Own(ctx) => return collect_frames(ctx, probe, max),
                UnitContext::Broken => return Vec::new(),
                UnitContext::NeedsAll => {}
            }
        }
        match self.full_context() {
            Some(ctx) => collect_frames(ctx, probe, max),
            None => Vec::new(),
        }
    }
}

fn collect_frames(ctx: &addr2line::Context<Slice>, probe: u64, max: usize) -> Vec<SourceFrame> {
    let mut out = Vec::new();
    let Ok(mut iter) = ctx.find_frames(probe).skip_all_loads() else {
        return out;
    };
    while let Ok(Some(frame)) = iter.next() {
        if out.len() >= max {
            break;
        }
        let function = frame
            .function
            .as_ref()
            .and_then(|f| f.demangle().ok())
            .map(|name| name.into_owned());
        let (file, line) = match &frame.location {
            Some(loc) => (loc.file.map(str::to_string), loc.line),
            None => (None, None),
        };
        out.push(SourceFrame {
            function,
            file,
            line,
        });
    }
    out
}

/// Sorted `.debug_aranges` entries: (start, end, unit offset).
fn index_aranges(
    sections: &[(gimli::SectionId, &'static [u8])],
    endian: RunTimeEndian,
) -> Vec<(u64, u64, usize)> {
    let data = sections
        .iter()
        .find(|(i, _)| *i == gimli::SectionId::DebugAranges)
        .map(|(_, b)| *b)
        .unwrap_or(&[]);
    let aranges = gimli::DebugAranges::new(data, endian);
    let mut out = Vec::new();
    let mut headers = aranges.headers();
    while let Ok(Some(header)) = headers.next() {
        let unit = header.debug_info_offset().0;
        let mut entries = header.entries();
        while let Ok(Some(entry)) = entries.next() {
            let r = entry.range();
            if r.begin < r.end {
                out.push((r.begin, r.end, unit));
            }
            if out.len() >= MAX_ARANGES {
                break;
            }
        }
        if out.len() >= MAX_ARANGES {
            break;
        }
    }
    out.sort_unstable();
    out
}

/// A `gimli::Dwarf` over `sections`, with `.debug_info` replaced by `info`
/// (one unit) if given; `.debug_aranges` is then left out, since its unit
/// offsets refer to the whole section.
fn dwarf_from(
    sections: &[(gimli::SectionId, &'static [u8])],
    endian: RunTimeEndian,
    info: Option<&'static [u8]>,
) -> Option<gimli::Dwarf<Slice>> {
    let mut load = |id: gimli::SectionId| -> Result<Slice, gimli::Error> {
        let bytes = match (id, info) {
            (gimli::SectionId::DebugInfo, Some(unit)) => unit,
            (gimli::SectionId::DebugAranges, Some(_)) => &[],
            _ => sections
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, b)| *b)
                .unwrap_or(&[]),
        };
        Ok(EndianSlice::new(bytes, endian))
    };
    gimli::Dwarf::load(&mut load).ok()
}

/// The DWARF sections addr2line reads, decompressed (in parallel) if needed.
fn load_sections(
    obj: &object::File<'static>,
    keeper: &mut Keeper,
) -> Vec<(gimli::SectionId, &'static [u8])> {
    // Only what addr2line reads: decompressing location lists, macros or
    // type units would be most of the cold cost for nothing.
    use gimli::SectionId as S;
    const WANTED: [S; 10] = [
        S::DebugAbbrev,
        S::DebugAddr,
        S::DebugAranges,
        S::DebugInfo,
        S::DebugLine,
        S::DebugLineStr,
        S::DebugRanges,
        S::DebugRngLists,
        S::DebugStr,
        S::DebugStrOffsets,
    ];
    let mut data: Vec<(S, &'static [u8])> = Vec::new();
    let mut compressed: Vec<(S, object::CompressedData<'static>)> = Vec::new();
    for id in WANTED {
        let Some(section) = obj.section_by_name(id.name()) else {
            continue;
        };
        match section.compressed_data() {
            Ok(c) if c.format == object::CompressionFormat::None => data.push((id, c.data)),
            // Decompressing allocates what the header claims: cap it.
            Ok(c) if c.uncompressed_size <= MAX_DECOMPRESSED => compressed.push((id, c)),
            _ => {}
        }
    }
    for (id, bytes) in decompress_all(compressed) {
        data.push((id, keeper.owned(bytes)));
    }
    data
}

/// Decompresses sections, on two threads when the machine has more than two
/// CPUs (biggest first, each to the less loaded worker): decompression is
/// most of the cold cost of symbolizing a module whose debug info is
/// compressed (Debian's `-dbg` packages). On two CPUs or fewer one thread
/// does it all: a second one would take the CPU the target runs on.
fn decompress_all(
    mut sections: Vec<(gimli::SectionId, object::CompressedData<'static>)>,
) -> Vec<(gimli::SectionId, Vec<u8>)> {
    sections.sort_by_key(|(_, c)| std::cmp::Reverse(c.uncompressed_size));
    let mut lanes: [Vec<(gimli::SectionId, object::CompressedData<'static>)>; 2] =
        [Vec::new(), Vec::new()];
    let mut load = [0u64; 2];
    for s in sections {
        let lane = usize::from(load[1] < load[0]);
        load[lane] = load[lane].saturating_add(s.1.uncompressed_size);
        lanes[lane].push(s);
    }
    let run = |lane: Vec<(gimli::SectionId, object::CompressedData<'static>)>| {
        lane.into_iter()
            .filter_map(|(id, c)| {
                let out = std::panic::catch_unwind(|| c.decompress()).ok()?.ok()?;
                Some((id, out.into_owned()))
            })
            .collect::<Vec<_>>()
    };
    let [mut a, b] = lanes;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= 2 {
        a.extend(b);
        return run(a);
    }
    if b.is_empty() {
        return run(a);
    }
    std::thread::scope(|scope| {
        let other = scope.spawn(|| run(b));
        let mut out = run(a);
        out.extend(other.join().unwrap_or_default());
        out
    })
}
