//! Where CPython keeps what a stack walk needs, per version.
//!
//! - 3.11 and 3.12: fixed layouts (x86_64, release builds), the offsets of
//!   `_PyRuntimeState`, `PyInterpreterState`, `PyThreadState`, `_PyCFrame`,
//!   `_PyInterpreterFrame`, `PyCodeObject` and the string objects as the
//!   headers of those versions define them (`Include/internal/pycore_*.h`);
//! - 3.13 and 3.14: read out of the target, from the `_Py_DebugOffsets`
//!   table CPython puts at the start of `_PyRuntime` for out-of-process
//!   tools ([`from_debug_offsets`]), validated before use: cookie
//!   `xdebugpy`, a version that matches the table's layout, a regular
//!   (not free-threaded) build, and every offset inside its structure's size.

use super::memory::{u64_at, PyResult};

/// The 8 bytes that start `_Py_DebugOffsets` (3.13+).
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// A CPython version, from `PY_VERSION_HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// `PY_VERSION_HEX`: 0xMMmmpp + release level and serial.
    pub hex: u64,
}

impl Version {
    /// Major version (3).
    pub fn major(self) -> u64 {
        (self.hex >> 24) & 0xff
    }
    /// Minor version (11 for 3.11).
    pub fn minor(self) -> u64 {
        (self.hex >> 16) & 0xff
    }
    /// Micro version.
    pub fn micro(self) -> u64 {
        (self.hex >> 8) & 0xff
    }
    /// (major, minor).
    pub fn minor_version(self) -> (u64, u64) {
        (self.major(), self.minor())
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.micro())?;
        let serial = self.hex & 0xf;
        match (self.hex >> 4) & 0xf {
            0xa => write!(f, "a{serial}"),
            0xb => write!(f, "b{serial}"),
            0xc => write!(f, "rc{serial}"),
            _ => Ok(()),
        }
    }
}

/// How a thread state reaches its innermost frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentFrame {
    /// 3.11, 3.12: `tstate->cframe->current_frame`.
    ViaCFrame {
        /// Offset of `cframe` in `PyThreadState`.
        cframe: u64,
        /// Offset of `current_frame` in `_PyCFrame`.
        current_frame: u64,
    },
    /// 3.13+: `tstate->current_frame`.
    Direct(u64),
}

/// Where the GIL's `locked` flag and `last_holder` live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilPlace {
    /// 3.11: in `_PyRuntime` (offsets from the runtime's start).
    Runtime {
        /// `ceval.gil.locked`.
        locked: u64,
        /// `ceval.gil.last_holder`.
        holder: u64,
    },
    /// 3.12+: in each interpreter (offsets from the interpreter's start).
    Interpreter {
        /// `_gil.locked`.
        locked: u64,
        /// `_gil.last_holder`.
        holder: u64,
    },
}

/// Everything the readers need to know about one CPython version's structures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The version these offsets are for.
    pub version: Version,
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.next`.
    pub interp_next: u64,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u64,
    /// The GIL.
    pub gil: GilPlace,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.thread_id` (the `pthread_t`).
    pub tstate_thread_id: u64,
    /// `PyThreadState.native_thread_id` (the kernel's thread id).
    pub tstate_native_thread_id: u64,
    /// How to reach the current frame.
    pub current_frame: CurrentFrame,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u64,
    /// `_PyInterpreterFrame.f_code` / `f_executable`.
    pub frame_executable: u64,
    /// `_PyInterpreterFrame.prev_instr` (3.11, 3.12) / `instr_ptr` (3.13+).
    pub frame_instr: u64,
    /// `_PyInterpreterFrame.owner`.
    pub frame_owner: u64,
    /// `_PyInterpreterFrame.localsplus` (the arguments, then the locals).
    pub frame_localsplus: u64,
    /// `_PyInterpreterFrame.f_globals` (not in `_Py_DebugOffsets`: 8 in
    /// 3.11, after f_func; 24 from 3.12 on, after f_code/f_executable,
    /// previous and f_funcobj — unchanged through 3.14).
    pub frame_globals: u64,
    /// `sizeof(PyTypeObject)` (a heap type's `ht_cached_keys` follows at a
    /// fixed distance: see [`super::threadname`]).
    pub type_size: u64,
    /// `_PyInterpreterFrame.is_entry` (3.11 only).
    pub frame_is_entry: Option<u64>,
    /// The `owner` value of the entry frame each `_PyEval_EvalFrameDefault`
    /// call pushes (`FRAME_OWNED_BY_CSTACK`, 3.12+).
    pub owner_cstack: Option<u8>,
    /// The `owner` value of the thread's base frame
    /// (`FRAME_OWNED_BY_INTERPRETER`, 3.14).
    pub owner_interpreter: Option<u8>,
    /// Bits to clear from `f_executable` (3.14's `_PyStackRef` tag bits).
    pub executable_tag_mask: u64,
    /// `_PyThreadStateImpl.asyncio_running_task` (3.14+, from the `_asyncio`
    /// module's table once it is loaded: see [`super::asyncio`]).
    pub tstate_running_task: Option<u64>,
    /// `PyGenObject.gi_name` (3.14+: the coroutine of a task).
    pub gen_name: Option<u64>,
    /// `sizeof(PyCodeObject)` (the header read of a code object).
    pub code_size: u64,
    /// `PyCodeObject.co_filename`.
    pub code_filename: u64,
    /// `PyCodeObject.co_name`.
    pub code_name: u64,
    /// `PyCodeObject.co_qualname`.
    pub code_qualname: u64,
    /// `PyCodeObject.co_linetable`.
    pub code_linetable: u64,
    /// `PyCodeObject.co_firstlineno`.
    pub code_firstlineno: u64,
    /// `PyCodeObject.co_code_adaptive` (the bytecode).
    pub code_adaptive: u64,
    /// `PyObject.ob_type`.
    pub ob_type: u64,
    /// `PyTypeObject.tp_name`.
    pub tp_name: u64,
    /// `PyASCIIObject.state`.
    pub unicode_state: u64,
    /// `PyASCIIObject.length`.
    pub unicode_length: u64,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_size: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' start.
    pub compact_size: u64,
    /// `PyBytesObject.ob_base.ob_size`.
    pub bytes_size: u64,
    /// `PyBytesObject.ob_sval`.
    pub bytes_sval: u64,
}

impl Layout {
    /// Bytes of a frame to read to get every field used.
    pub fn frame_read_len(&self) -> usize {
        let last = [
            self.frame_previous + 8,
            self.frame_executable + 8,
            self.frame_instr + 8,
            self.frame_owner + 1,
            self.frame_is_entry.map_or(0, |o| o + 1),
        ];
        last.iter().copied().max().unwrap_or(0) as usize
    }

    /// Bytes of a thread state to read.
    pub fn tstate_read_len(&self) -> usize {
        let cf = match self.current_frame {
            CurrentFrame::ViaCFrame { cframe, .. } => cframe,
            CurrentFrame::Direct(o) => o,
        };
        [
            self.tstate_next,
            self.tstate_thread_id,
            self.tstate_native_thread_id,
            cf,
        ]
        .iter()
        .copied()
        .max()
        .unwrap_or(0) as usize
            + 8
    }
}

/// The layout of a version known by its fixed offsets (3.11, 3.12), or
/// `None` for versions read through debug offsets or not supported.
pub fn fixed_layout(version: Version) -> Option<Layout> {
    let common = |v: Version| Layout {
        version: v,
        runtime_interpreters_head: 40,
        interp_next: 0,
        interp_threads_head: 0,
        gil: GilPlace::Runtime {
            locked: 0,
            holder: 0,
        },
        tstate_next: 8,
        tstate_thread_id: 0,
        tstate_native_thread_id: 0,
        current_frame: CurrentFrame::ViaCFrame {
            cframe: 56,
            current_frame: 0,
        },
        frame_previous: 0,
        frame_executable: 0,
        frame_instr: 56,
        frame_owner: 0,
        // Right after `owner` (3.11: is_entry 68, owner 69; 3.12: owner 70),
        // aligned to a pointer.
        frame_localsplus: 72,
        frame_globals: 24,
        type_size: 0,
        frame_is_entry: None,
        owner_cstack: None,
        owner_interpreter: None,
        executable_tag_mask: 0,
        tstate_running_task: None,
        gen_name: None,
        code_size: 0,
        code_filename: 112,
        code_name: 120,
        code_qualname: 128,
        code_linetable: 136,
        code_firstlineno: 0,
        code_adaptive: 0,
        ob_type: 8,
        tp_name: 24,
        unicode_state: 32,
        unicode_length: 16,
        ascii_size: 0,
        compact_size: 0,
        bytes_size: 16,
        bytes_sval: 32,
    };
    match version.minor_version() {
        // Include/internal/pycore_{runtime,interp,frame}.h, Include/cpython/
        // {pystate,code,unicodeobject}.h of 3.11 (checked with offsetof
        // against the 3.11.7 headers).
        (3, 11) => Some(Layout {
            interp_threads_head: 16,
            gil: GilPlace::Runtime {
                locked: 376,
                holder: 368,
            },
            tstate_thread_id: 152,
            tstate_native_thread_id: 160,
            current_frame: CurrentFrame::ViaCFrame {
                cframe: 56,
                current_frame: 8,
            },
            frame_previous: 48,
            frame_executable: 32,
            frame_owner: 69,
            frame_is_entry: Some(68),
            // PyTypeObject ends with tp_vectorcall (3.11).
            type_size: 408,
            frame_globals: 8,
            code_size: 192,
            code_firstlineno: 72,
            code_adaptive: 184,
            // 3.11 strings still carry `wstr` (PyASCIIObject is 48 bytes,
            // PyCompactUnicodeObject 72).
            ascii_size: 48,
            compact_size: 72,
            ..common(version)
        }),
        // The same headers of 3.12 (checked against 3.12.1): the GIL moved
        // into the interpreter (`_gil`), the entry frame became a frame of
        // its own (FRAME_OWNED_BY_CSTACK).
        (3, 12) => Some(Layout {
            interp_threads_head: 72,
            gil: GilPlace::Interpreter {
                locked: 1040 + 16,
                holder: 1040 + 8,
            },
            tstate_thread_id: 136,
            tstate_native_thread_id: 144,
            current_frame: CurrentFrame::ViaCFrame {
                cframe: 56,
                current_frame: 0,
            },
            frame_previous: 8,
            frame_executable: 0,
            frame_owner: 70,
            owner_cstack: Some(3),
            // 3.12 added tp_watched (one byte, padded).
            type_size: 416,
            code_size: 200,
            code_firstlineno: 68,
            code_adaptive: 192,
            ascii_size: 40,
            compact_size: 56,
            ..common(version)
        }),
        _ => None,
    }
}

/// `u64` fields of `_Py_DebugOffsets` after the cookie, by index, for one
/// minor version: (name, index).
struct DebugTable {
    len: usize,
    runtime_size: usize,
    interpreters_head: usize,
    interp_size: usize,
    interp_next: usize,
    threads_head: usize,
    gil_locked: usize,
    gil_holder: usize,
    tstate_size: usize,
    tstate_next: usize,
    current_frame: usize,
    thread_id: usize,
    native_thread_id: usize,
    frame_size: usize,
    frame_previous: usize,
    frame_executable: usize,
    frame_instr: usize,
    frame_localsplus: usize,
    frame_owner: usize,
    code_size: usize,
    code_filename: usize,
    code_name: usize,
    code_qualname: usize,
    code_linetable: usize,
    code_firstlineno: usize,
    code_adaptive: usize,
    pyobject_size: usize,
    ob_type: usize,
    type_size: usize,
    tp_name: usize,
    bytes_size_struct: usize,
    bytes_ob_size: usize,
    bytes_sval: usize,
    unicode_size: usize,
    unicode_state: usize,
    unicode_length: usize,
    ascii_size: usize,
}

/// 3.13's `_Py_DebugOffsets` (Include/internal/pycore_runtime.h).
const TABLE_3_13: DebugTable = DebugTable {
    len: 72,
    runtime_size: 2,
    interpreters_head: 4,
    interp_size: 5,
    interp_next: 7,
    threads_head: 8,
    gil_locked: 16,
    gil_holder: 17,
    tstate_size: 18,
    tstate_next: 20,
    current_frame: 22,
    thread_id: 23,
    native_thread_id: 24,
    frame_size: 27,
    frame_previous: 28,
    frame_executable: 29,
    frame_instr: 30,
    frame_localsplus: 31,
    frame_owner: 32,
    code_size: 33,
    code_filename: 34,
    code_name: 35,
    code_qualname: 36,
    code_linetable: 37,
    code_firstlineno: 38,
    code_adaptive: 42,
    pyobject_size: 43,
    ob_type: 44,
    type_size: 45,
    tp_name: 46,
    bytes_size_struct: 63,
    bytes_ob_size: 64,
    bytes_sval: 65,
    unicode_size: 66,
    unicode_state: 67,
    unicode_length: 68,
    ascii_size: 69,
};

/// 3.14's `_Py_DebugOffsets` (Include/internal/pycore_debug_offsets.h):
/// more interpreter, frame and code fields, and set, generator, list-node
/// and debugger sections.
const TABLE_3_14: DebugTable = DebugTable {
    len: 94,
    runtime_size: 2,
    interpreters_head: 4,
    interp_size: 5,
    interp_next: 7,
    threads_head: 8,
    gil_locked: 17,
    gil_holder: 18,
    tstate_size: 21,
    tstate_next: 23,
    current_frame: 25,
    thread_id: 26,
    native_thread_id: 27,
    frame_size: 30,
    frame_previous: 31,
    frame_executable: 32,
    frame_instr: 33,
    frame_localsplus: 34,
    frame_owner: 35,
    code_size: 38,
    code_filename: 39,
    code_name: 40,
    code_qualname: 41,
    code_linetable: 42,
    code_firstlineno: 43,
    code_adaptive: 47,
    pyobject_size: 49,
    ob_type: 50,
    type_size: 51,
    tp_name: 52,
    bytes_size_struct: 73,
    bytes_ob_size: 74,
    bytes_sval: 75,
    unicode_size: 76,
    unicode_state: 77,
    unicode_length: 78,
    ascii_size: 79,
};

/// Bytes of `_Py_DebugOffsets` to read (the largest known table).
pub const DEBUG_OFFSETS_READ: usize = 8 + 8 * 94;

/// Largest structure size believed (1 MiB: `_PyRuntimeState` of 3.12 is 450 KB).
const MAX_STRUCT: u64 = 1 << 20;

/// The version stated by a `_Py_DebugOffsets` table, if `bytes` starts with
/// the cookie.
pub fn debug_offsets_version(bytes: &[u8]) -> Option<Version> {
    if bytes.get(..8)? != DEBUG_COOKIE {
        return None;
    }
    Some(Version {
        hex: u64_at(bytes, 8)?,
    })
}

/// Builds the layout of a 3.13+ interpreter from the `_Py_DebugOffsets`
/// bytes at the start of its `_PyRuntime`; every value is checked.
pub fn from_debug_offsets(bytes: &[u8]) -> PyResult<Layout> {
    let version = debug_offsets_version(bytes)
        .ok_or("no _Py_DebugOffsets at the start of _PyRuntime (cookie \"xdebugpy\" missing)")?;
    let table = match version.minor_version() {
        (3, 13) => &TABLE_3_13,
        (3, 14) => &TABLE_3_14,
        _ => {
            return Err(format!(
                "Python {version}: its _Py_DebugOffsets layout is not known (3.11 to 3.14 are)"
            ))
        }
    };
    let field = |i: usize| -> PyResult<u64> {
        u64_at(bytes, 8 + 8 * i as u64)
            .ok_or_else(|| format!("Python {version}: _Py_DebugOffsets truncated (field {i})"))
    };
    if bytes.len() < 8 + 8 * table.len {
        return Err(format!(
            "Python {version}: _Py_DebugOffsets truncated ({} bytes)",
            bytes.len()
        ));
    }
    if field(1)? != 0 {
        return Err(format!(
            "Python {version} is a free-threaded build: its thread and frame layout is not supported"
        ));
    }
    // Each offset must lie inside its structure, and each structure have a
    // believable size: a table that fails is garbage, not a new layout.
    let sized = |size_i: usize, what: &str| -> PyResult<u64> {
        let s = field(size_i)?;
        if s == 0 || s > MAX_STRUCT {
            return Err(format!(
                "Python {version}: implausible size {s} of {what} in _Py_DebugOffsets"
            ));
        }
        Ok(s)
    };
    let inside = |i: usize, size: u64, width: u64, what: &str| -> PyResult<u64> {
        let o = field(i)?;
        if o.checked_add(width).map_or(true, |end| end > size) {
            return Err(format!(
                "Python {version}: offset {o} of {what} lies outside its structure ({size} bytes) in _Py_DebugOffsets"
            ));
        }
        Ok(o)
    };
    let runtime = sized(table.runtime_size, "_PyRuntimeState")?;
    let interp = sized(table.interp_size, "PyInterpreterState")?;
    let tstate = sized(table.tstate_size, "PyThreadState")?;
    let frame = sized(table.frame_size, "_PyInterpreterFrame")?;
    let code = sized(table.code_size, "PyCodeObject")?;
    let object = sized(table.pyobject_size, "PyObject")?;
    let ty = sized(table.type_size, "PyTypeObject")?;
    let bytes_obj = sized(table.bytes_size_struct, "PyBytesObject")?;
    let unicode = sized(table.unicode_size, "PyUnicodeObject")?;
    let ascii_size = field(table.ascii_size)?;
    if ascii_size == 0 || ascii_size > unicode {
        return Err(format!(
            "Python {version}: implausible PyASCIIObject size {ascii_size} in _Py_DebugOffsets"
        ));
    }
    Ok(Layout {
        version,
        runtime_interpreters_head: inside(
            table.interpreters_head,
            runtime,
            8,
            "interpreters.head",
        )?,
        interp_next: inside(table.interp_next, interp, 8, "interp.next")?,
        interp_threads_head: inside(table.threads_head, interp, 8, "threads.head")?,
        gil: GilPlace::Interpreter {
            locked: inside(table.gil_locked, interp, 4, "_gil.locked")?,
            holder: inside(table.gil_holder, interp, 8, "_gil.last_holder")?,
        },
        tstate_next: inside(table.tstate_next, tstate, 8, "tstate.next")?,
        tstate_thread_id: inside(table.thread_id, tstate, 8, "tstate.thread_id")?,
        tstate_native_thread_id: inside(
            table.native_thread_id,
            tstate,
            8,
            "tstate.native_thread_id",
        )?,
        current_frame: CurrentFrame::Direct(inside(
            table.current_frame,
            tstate,
            8,
            "tstate.current_frame",
        )?),
        frame_previous: inside(table.frame_previous, frame, 8, "frame.previous")?,
        frame_executable: inside(table.frame_executable, frame, 8, "frame.f_executable")?,
        frame_instr: inside(table.frame_instr, frame, 8, "frame.instr_ptr")?,
        frame_owner: inside(table.frame_owner, frame, 1, "frame.owner")?,
        // localsplus is the variable part at the end: it may equal the size.
        frame_localsplus: inside(table.frame_localsplus, frame + 8, 8, "frame.localsplus")?,
        frame_globals: 24,
        type_size: ty,
        frame_is_entry: None,
        owner_cstack: Some(if version.minor() >= 14 { 4 } else { 3 }),
        owner_interpreter: (version.minor() >= 14).then_some(3),
        // 3.14's _PyStackRef: the low two bits tag deferred and immortal
        // references (Py_TAG_BITS).
        executable_tag_mask: if version.minor() >= 14 { 3 } else { 0 },
        tstate_running_task: None,
        // 3.14's gen_object {size, gi_name, gi_iframe, gi_frame_state} is
        // fields 82–85 (3.13's table is not read for it: tasks are 3.14+).
        gen_name: match version.minor() {
            14 => {
                let gen = sized(82, "PyGenObject")?;
                Some(inside(83, gen, 8, "gi_name")?)
            }
            _ => None,
        },
        code_size: code,
        code_filename: inside(table.code_filename, code, 8, "co_filename")?,
        code_name: inside(table.code_name, code, 8, "co_name")?,
        code_qualname: inside(table.code_qualname, code, 8, "co_qualname")?,
        code_linetable: inside(table.code_linetable, code, 8, "co_linetable")?,
        code_firstlineno: inside(table.code_firstlineno, code, 4, "co_firstlineno")?,
        // co_code_adaptive is the variable part at the end: it may equal the size.
        code_adaptive: inside(table.code_adaptive, code + 8, 0, "co_code_adaptive")?,
        ob_type: inside(table.ob_type, object, 8, "ob_type")?,
        tp_name: inside(table.tp_name, ty, 8, "tp_name")?,
        unicode_state: inside(table.unicode_state, ascii_size, 4, "unicode state")?,
        unicode_length: inside(table.unicode_length, ascii_size, 8, "unicode length")?,
        ascii_size,
        // PyCompactUnicodeObject adds utf8_length and utf8 (3.12+).
        compact_size: ascii_size + 16,
        bytes_size: inside(table.bytes_ob_size, bytes_obj, 8, "bytes ob_size")?,
        bytes_sval: inside(table.bytes_sval, bytes_obj, 1, "bytes ob_sval")?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 3.13 `_Py_DebugOffsets` as CPython 3.13 fills it (values from the
    /// 3.13 headers' offsetof; only the fields we read matter to the test).
    pub(crate) fn debug_offsets_3_13() -> Vec<u8> {
        let mut f = vec![0u64; 72];
        f[0] = 0x030d05f0;
        f[2] = 1000; // runtime size
        f[4] = 40;
        f[5] = 20000; // interp size
        f[7] = 0;
        f[8] = 72;
        f[16] = 1100;
        f[17] = 1092;
        f[18] = 300; // tstate size
        f[20] = 8;
        f[22] = 72;
        f[23] = 136;
        f[24] = 144;
        f[27] = 80; // frame size
        f[28] = 8;
        f[29] = 0;
        f[30] = 56;
        f[31] = 72;
        f[32] = 70;
        f[33] = 200; // code size
        f[34] = 112;
        f[35] = 120;
        f[36] = 128;
        f[37] = 136;
        f[38] = 68;
        f[42] = 200;
        f[43] = 16;
        f[44] = 8;
        f[45] = 400;
        f[46] = 24;
        f[63] = 40;
        f[64] = 16;
        f[65] = 32;
        f[66] = 56;
        f[67] = 32;
        f[68] = 16;
        f[69] = 40;
        let mut b = DEBUG_COOKIE.to_vec();
        for v in f {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Debian's 3.14.8 `_Py_DebugOffsets` (fields after the cookie, as read
    /// out of its `.PyRuntime` section).
    pub(crate) fn debug_offsets_3_14() -> Vec<u8> {
        let f: [u64; 94] = [
            0x30e08f0, 0x0, 0x4d4c8, 0x310, 0x328, 0x37248, 0x1c70, 0x1c68, 0x1cb0, 0x1cc0, 0x1cf0,
            0x1e08, 0x1df8, 0x1e00, 0x10, 0x1e68, 0x0, 0x1e78, 0x1e70, 0x1f38, 0x0, 0x340, 0x0,
            0x8, 0x10, 0x48, 0x98, 0xa0, 0xe8, 0x20, 0x58, 0x8, 0x0, 0x38, 0x50, 0x4a, 0x40, 0x0,
            0xd8, 0x70, 0x78, 0x80, 0x88, 0x44, 0x34, 0x60, 0x68, 0xd0, 0x0, 0x10, 0x8, 0x1a0,
            0x18, 0x58, 0xa8, 0x28, 0x20, 0x10, 0x28, 0x18, 0x10, 0xc8, 0x18, 0x28, 0x20, 0x30,
            0x20, 0x28, 0x18, 0x10, 0x20, 0x10, 0x18, 0x28, 0x10, 0x20, 0x40, 0x20, 0x10, 0x28,
            0x108, 0xc0, 0xa0, 0x18, 0x48, 0x43, 0x0, 0x8, 0x18, 0x130, 0x1f8c, 0x0, 0x4, 0x200,
        ];
        let mut b = DEBUG_COOKIE.to_vec();
        for v in f {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn debians_3_14_table_reads() {
        let l = from_debug_offsets(&debug_offsets_3_14()).unwrap();
        assert_eq!(l.version.to_string(), "3.14.8");
        assert_eq!(l.gen_name, Some(0x18));
        assert_eq!(l.owner_interpreter, Some(3));
        assert_eq!(l.executable_tag_mask, 3);
        assert_eq!(l.tstate_running_task, None);
    }

    #[test]
    fn versions_print_like_python() {
        assert_eq!(Version { hex: 0x030b07f0 }.to_string(), "3.11.7");
        assert_eq!(Version { hex: 0x030e00c2 }.to_string(), "3.14.0rc2");
        assert_eq!(Version { hex: 0x030d00a1 }.to_string(), "3.13.0a1");
    }

    #[test]
    fn fixed_layouts_exist_for_3_11_and_3_12_only() {
        let l = fixed_layout(Version { hex: 0x030b07f0 }).unwrap();
        assert_eq!(l.frame_is_entry, Some(68));
        assert_eq!(l.frame_read_len(), 70);
        assert_eq!(l.tstate_read_len(), 168);
        let l = fixed_layout(Version { hex: 0x030c01f0 }).unwrap();
        assert_eq!(l.owner_cstack, Some(3));
        assert!(fixed_layout(Version { hex: 0x030a0df0 }).is_none());
        assert!(fixed_layout(Version { hex: 0x030d05f0 }).is_none());
    }

    #[test]
    fn debug_offsets_are_validated() {
        let good = debug_offsets_3_13();
        let l = from_debug_offsets(&good).unwrap();
        assert_eq!(l.version.to_string(), "3.13.5");
        assert_eq!(l.current_frame, CurrentFrame::Direct(72));
        assert_eq!(l.owner_cstack, Some(3));
        assert_eq!(l.compact_size, 56);

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(from_debug_offsets(&bad).unwrap_err().contains("xdebugpy"));
        // An offset past its structure's size.
        let mut bad = good.clone();
        bad[8 + 8 * 30..8 + 8 * 31].copy_from_slice(&4000u64.to_le_bytes());
        let e = from_debug_offsets(&bad).unwrap_err();
        assert!(e.contains("frame.instr_ptr") && e.contains("3.13.5"), "{e}");
        // An implausible size.
        let mut bad = good.clone();
        bad[8 + 8 * 27..8 + 8 * 28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(from_debug_offsets(&bad)
            .unwrap_err()
            .contains("implausible"));
        // Free-threaded.
        let mut bad = good.clone();
        bad[16] = 1;
        assert!(from_debug_offsets(&bad)
            .unwrap_err()
            .contains("free-threaded"));
        // A version whose table is unknown names the version.
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&0x030f00a1u64.to_le_bytes());
        let e = from_debug_offsets(&bad).unwrap_err();
        assert!(e.contains("3.15.0a1"), "{e}");
        // Truncated.
        assert!(from_debug_offsets(&good[..100])
            .unwrap_err()
            .contains("truncated"));
        assert!(from_debug_offsets(&[]).is_err());
    }
}
