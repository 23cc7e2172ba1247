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

/// An `addr2line` context over DWARF read from mapped files.
pub struct DwarfContext {
    // Declared first: dropped before the bytes it points into.
    ctx: addr2line::Context<Slice>,
    _decompressed: Vec<Box<[u8]>>,
    _files: Vec<Arc<MappedFile>>,
}

impl std::fmt::Debug for DwarfContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfContext").finish_non_exhaustive()
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
    /// Builds a context from the DWARF sections of `debug` (the separate debug
    /// file, or the module itself). `sup` is a supplementary file
    /// (`.gnu_debugaltlink`), if found. `None` when there is no usable DWARF.
    pub fn load(debug: &Arc<MappedFile>, sup: Option<&Arc<MappedFile>>) -> Option<DwarfContext> {
        let mut keeper = Keeper {
            decompressed: Vec::new(),
            files: Vec::new(),
        };
        let ctx = {
            let data = keeper.file(debug);
            let obj = object::File::parse(data).ok()?;
            obj.section_by_name(".debug_info")?;
            let endian = if obj.is_little_endian() {
                RunTimeEndian::Little
            } else {
                RunTimeEndian::Big
            };
            let mut dwarf = load_dwarf(&obj, endian, &mut keeper)?;
            if let Some(sup) = sup {
                let sup_data = keeper.file(sup);
                if let Ok(sup_obj) = object::File::parse(sup_data) {
                    if let Some(sup_dwarf) = load_dwarf(&sup_obj, endian, &mut keeper) {
                        dwarf.sup = Some(Arc::new(sup_dwarf));
                    }
                }
            }
            addr2line::Context::from_dwarf(dwarf).ok()?
        };
        Some(DwarfContext {
            ctx,
            _decompressed: keeper.decompressed,
            _files: keeper.files,
        })
    }

    /// Functions at `probe` (an address as stated in the ELF file), innermost
    /// inlined function first, each with its source location. Empty when
    /// DWARF knows nothing of the address.
    pub fn frames(&self, probe: u64, max: usize) -> Vec<SourceFrame> {
        let mut out = Vec::new();
        let Ok(mut iter) = self.ctx.find_frames(probe).skip_all_loads() else {
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
}

fn load_dwarf(
    obj: &object::File<'static>,
    endian: RunTimeEndian,
    keeper: &mut Keeper,
) -> Option<gimli::Dwarf<Slice>> {
    let mut load = |id: gimli::SectionId| -> Result<Slice, gimli::Error> {
        // Only what addr2line reads: decompressing location lists, macros or
        // type units would be most of the cold cost for nothing.
        use gimli::SectionId as S;
        let wanted = matches!(
            id,
            S::DebugAbbrev
                | S::DebugAddr
                | S::DebugAranges
                | S::DebugInfo
                | S::DebugLine
                | S::DebugLineStr
                | S::DebugRanges
                | S::DebugRngLists
                | S::DebugStr
                | S::DebugStrOffsets
        );
        let section = if wanted {
            obj.section_by_name(id.name())
        } else {
            None
        };
        let data: &'static [u8] = match section {
            Some(section) => match section.compressed_data() {
                Ok(c) if c.format == object::CompressionFormat::None => c.data,
                // Decompressing allocates what the header claims: cap it.
                Ok(c) if c.uncompressed_size <= MAX_DECOMPRESSED => match c.decompress() {
                    Ok(std::borrow::Cow::Borrowed(b)) => b,
                    Ok(std::borrow::Cow::Owned(v)) => keeper.owned(v),
                    Err(_) => &[],
                },
                _ => &[],
            },
            None => &[],
        };
        Ok(EndianSlice::new(data, endian))
    };
    gimli::Dwarf::load(&mut load).ok()
}
