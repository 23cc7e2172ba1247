//! The asyncio task each thread's loop is running, on CPython 3.14+, from
//! the interpreter's own asyncio debug offsets.
//!
//! CPython 3.14's `_asyncio` module (`Modules/_asynciomodule.c`) puts a
//! `_Py_AsyncioModuleDebugOffsets` table in an ELF section of its own,
//! `.AsyncioDebug`, for out-of-process tools: the offsets of `TaskObj`'s
//! name and coroutine and of `_PyThreadStateImpl.asyncio_running_task` (the
//! task the C `enter_task` made current on that thread). Debian's 3.14 builds
//! `_asyncio` as a shared module (`lib-dynload/_asyncio.cpython-314-….so`),
//! other builds link it into the interpreter: both places are looked at.
//!
//! - [`from_section`]: the table, validated (sizes believable, every offset
//!   inside its structure);
//! - [`locate`]: the section in the target (read from its memory, where the
//!   module is loaded — no `_asyncio` mapped means no asyncio yet);
//! - the running task's address is read during the stop with each thread
//!   state ([`super::capture`]); [`read_task`] decodes it after the detach
//!   (a task's name and coroutine do not change while it runs).

use super::code::read_unicode;
use super::layout::Layout;
use super::locate::{distinct_files, MappedModule};
use super::memory::{read_c_string, read_u64, read_vec, u32_at, u64_at, PyResult, ReadMemory};
use crate::elf;
use crate::proc::MapEntry;

/// The section `_asyncio` puts its table in.
pub const SECTION: &str = ".AsyncioDebug";
/// Bytes of 3.14's `_Py_AsyncioModuleDebugOffsets` (13 `u64`).
pub const TABLE_LEN: usize = 13 * 8;
/// Largest structure size believed (`PyInterpreterState` of 3.14 is 220 KB).
const MAX_STRUCT: u64 = 1 << 20;
/// Most bytes of a type's `tp_name` read.
const MAX_TYPE_NAME: usize = 128;

/// What the readers use of `_Py_AsyncioModuleDebugOffsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncioOffsets {
    /// `sizeof(TaskObj)`.
    pub task_size: u64,
    /// `TaskObj.task_name`.
    pub task_name: u64,
    /// `TaskObj.task_coro`.
    pub task_coro: u64,
    /// `sizeof(_PyThreadStateImpl)`.
    pub tstate_size: u64,
    /// `_PyThreadStateImpl.asyncio_running_task`.
    pub running_task: u64,
}

/// Parses the table (3.14: `asyncio_task_object` {size, task_name,
/// task_awaited_by, task_is_task, task_awaited_by_is_set, task_coro,
/// task_node}, `asyncio_interpreter_state` {size, asyncio_tasks_head},
/// `asyncio_thread_state` {size, asyncio_running_loop, asyncio_running_task,
/// asyncio_tasks_head}); every value is checked.
pub fn from_section(bytes: &[u8]) -> PyResult<AsyncioOffsets> {
    if bytes.len() < TABLE_LEN {
        return Err(format!(
            "{SECTION} is {} bytes, {TABLE_LEN} expected",
            bytes.len()
        ));
    }
    let field = |i: u64| u64_at(bytes, 8 * i).unwrap_or(0);
    let sized = |i: u64, what: &str| -> PyResult<u64> {
        let s = field(i);
        if !(16..=MAX_STRUCT).contains(&s) {
            return Err(format!("{SECTION}: implausible size {s} of {what}"));
        }
        Ok(s)
    };
    let inside = |i: u64, size: u64, what: &str| -> PyResult<u64> {
        let o = field(i);
        if o < 16 || o.checked_add(8).map_or(true, |end| end > size) {
            return Err(format!(
                "{SECTION}: offset {o} of {what} lies outside its structure ({size} bytes)"
            ));
        }
        Ok(o)
    };
    let task_size = sized(0, "TaskObj")?;
    let tstate_size = sized(9, "_PyThreadStateImpl")?;
    Ok(AsyncioOffsets {
        task_size,
        task_name: inside(1, task_size, "task_name")?,
        task_coro: inside(5, task_size, "task_coro")?,
        tstate_size,
        running_task: inside(11, tstate_size, "asyncio_running_task")?,
    })
}

/// Where a process's `_asyncio` table is: the module holding it and the
/// parsed table, `Ok(None)` when no mapped file has the section (asyncio
/// not imported yet, or a version without it).
pub fn locate(
    pid: i32,
    maps: &[MapEntry],
    mem: &dyn ReadMemory,
    runtime_module: &str,
) -> PyResult<Option<(String, AsyncioOffsets)>> {
    for MappedModule { path, first } in distinct_files(maps) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let display = path.display().to_string();
        // The shared module, or an interpreter with `_asyncio` built in.
        if !name.starts_with("_asyncio") && display != runtime_module {
            continue;
        }
        let Ok((mapped, Some(bias))) = elf::map_module(pid, first) else {
            continue;
        };
        let Ok(elf::Addresses {
            section: Some(section),
            ..
        }) = elf::find_addresses(mapped.bytes(), SECTION, &[])
        else {
            continue;
        };
        // Read from the target (the table is initialised data of the
        // loaded module), like _Py_DebugOffsets.
        let table = read_vec(mem, section.wrapping_add(bias), TABLE_LEN)
            .map_err(|e| format!("{display}: cannot read {SECTION}: {e}"))?;
        return from_section(&table)
            .map(|t| Some((display.clone(), t)))
            .map_err(|e| format!("{display}: {e}"));
    }
    Ok(None)
}

/// The task a thread's loop is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyTask {
    /// `Task.get_name()` (`Task-7` for an unnamed task).
    pub name: String,
    /// The coroutine's `__name__`, if readable.
    pub coro: Option<String>,
}

impl PyTask {
    /// `task 'handle-order-7' (coro handle)`.
    pub fn describe(&self) -> String {
        match &self.coro {
            Some(c) => format!("task '{}' (coro {c})", self.name),
            None => format!("task '{}'", self.name),
        }
    }
}

/// `tp_name` of the object at `obj`'s type.
pub fn type_name(mem: &dyn ReadMemory, l: &Layout, obj: u64) -> PyResult<String> {
    let ty = read_u64(mem, obj.wrapping_add(l.ob_type))?;
    let name = read_u64(mem, ty.wrapping_add(l.tp_name))?;
    read_c_string(mem, name, MAX_TYPE_NAME)
}

/// Most 30-bit digits of an `int` decoded (a `u64` needs 3).
const MAX_DIGITS: u64 = 3;

/// An `int` object that fits a `u64` (3.11: `ob_size` counts the digits;
/// 3.12+: `lv_tag` holds the count above 3 flag bits; the digits follow at
/// 24 either way on a regular build: `PyObject_HEAD` is 16 bytes, the
/// size or tag 8).
pub fn read_small_int(mem: &dyn ReadMemory, l: &Layout, addr: u64) -> PyResult<u64> {
    let head = read_vec(mem, addr, 24)?;
    let word = u64_at(&head, 16).ok_or("int header truncated")?;
    let (ndigits, negative) = if l.version.minor() >= 12 {
        (word >> 3, word & 3 == 2)
    } else {
        let size = word as i64;
        (size.unsigned_abs(), size < 0)
    };
    if negative || ndigits > MAX_DIGITS {
        return Err(format!("int at 0x{addr:x} does not fit 64 bits"));
    }
    let digits = read_vec(mem, addr.wrapping_add(24), (ndigits * 4) as usize)?;
    let mut v: u128 = 0;
    for i in (0..ndigits).rev() {
        let d = u32_at(&digits, i * 4).ok_or("int digits truncated")?;
        v = (v << 30) | u128::from(d & 0x3fff_ffff);
    }
    u64::try_from(v).map_err(|_| format!("int at 0x{addr:x} does not fit 64 bits"))
}

/// Decodes the running task at `task` (read from a thread state during the
/// stop): its name and its coroutine's name. An object that is not a task
/// is an error.
pub fn read_task(
    mem: &dyn ReadMemory,
    l: &Layout,
    a: &AsyncioOffsets,
    task: u64,
) -> PyResult<PyTask> {
    let ty = type_name(mem, l, task)
        .map_err(|e| format!("the running task at 0x{task:x} is unreadable: {e}"))?;
    // `_asyncio.Task` or a subclass (which keeps TaskObj's layout).
    if !ty.contains("Task") {
        return Err(format!(
            "the running task at 0x{task:x} is a {ty:?}, not a Task"
        ));
    }
    let head = read_vec(mem, task, a.task_size as usize)?;
    let name_obj = u64_at(&head, a.task_name).unwrap_or(0);
    // 3.12+ names unnamed tasks lazily: `task_name` holds the counter (an
    // int) until `get_name()` formats it as `Task-N`.
    let name = match type_name(mem, l, name_obj).as_deref() {
        Ok("str") => read_unicode(mem, l, name_obj)?,
        Ok("int") => format!("Task-{}", read_small_int(mem, l, name_obj)?),
        Ok(other) => format!("<{other}>"),
        Err(e) => return Err(format!("the task's name is unreadable: {e}")),
    };
    let coro_obj = u64_at(&head, a.task_coro).unwrap_or(0);
    let coro = l.gen_name.and_then(|off| {
        let n = read_u64(mem, coro_obj.wrapping_add(off)).ok()?;
        read_unicode(mem, l, n).ok()
    });
    Ok(PyTask { name, coro })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::code::tests::ascii_str;
    use crate::python::layout::from_debug_offsets;
    use crate::python::layout::tests::debug_offsets_3_14;
    use crate::python::memory::SliceMemory;

    /// The table of Debian's 3.14.8 `_asyncio` module, as `objdump -s -j
    /// .AsyncioDebug` prints it.
    pub(crate) const DEBIAN_3_14_8: [u64; 13] = [
        0xa8, 0x88, 0x60, 0x6c, 0x6d, 0x80, 0x98, 0x37248, 0x2a80, 0x3a8, 0x360, 0x368, 0x370,
    ];

    fn table(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn the_table_is_parsed_and_validated() {
        let a = from_section(&table(&DEBIAN_3_14_8)).unwrap();
        assert_eq!(
            a,
            AsyncioOffsets {
                task_size: 0xa8,
                task_name: 0x88,
                task_coro: 0x80,
                tstate_size: 0x3a8,
                running_task: 0x368,
            }
        );
        assert!(from_section(&table(&DEBIAN_3_14_8)[..50])
            .unwrap_err()
            .contains("50 bytes"));
        let mut bad = DEBIAN_3_14_8;
        bad[11] = 0x3a8; // running task at the end of the thread state
        assert!(from_section(&table(&bad))
            .unwrap_err()
            .contains("asyncio_running_task"));
        let mut bad = DEBIAN_3_14_8;
        bad[0] = u64::MAX;
        assert!(from_section(&table(&bad))
            .unwrap_err()
            .contains("implausible"));
        assert!(from_section(&[0xff; TABLE_LEN]).is_err());
    }

    /// A type object at `at` named `name`.
    fn ty(mem: &mut SliceMemory, l: &Layout, at: u64, name: &str) {
        let mut t = vec![0u8; 64];
        t[l.tp_name as usize..][..8].copy_from_slice(&(at + 0x100).to_le_bytes());
        mem.add(at, t);
        mem.add(at + 0x100, format!("{name}\0").into_bytes());
    }

    fn obj(l: &Layout, size: usize, ty: u64, fields: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[l.ob_type as usize..][..8].copy_from_slice(&ty.to_le_bytes());
        for (o, v) in fields {
            b[*o as usize..][..8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn with_type(l: &Layout, mut s: Vec<u8>, ty: u64) -> Vec<u8> {
        s[l.ob_type as usize..][..8].copy_from_slice(&ty.to_le_bytes());
        s
    }

    #[test]
    fn a_running_task_reads_as_its_name_and_coroutine() {
        let l = from_debug_offsets(&debug_offsets_3_14()).unwrap();
        let a = from_section(&table(&DEBIAN_3_14_8)).unwrap();
        let gen_name = l.gen_name.unwrap();
        let mut mem = SliceMemory::new();
        ty(&mut mem, &l, 0x1_0000, "_asyncio.Task");
        ty(&mut mem, &l, 0x2_0000, "str");
        ty(&mut mem, &l, 0x3_0000, "coroutine");
        ty(&mut mem, &l, 0x4_0000, "int");
        let (task, name, coro, coro_name) = (0x10_0000, 0x11_0000, 0x12_0000, 0x13_0000);
        // A Task object naming `name` and running `coro`.
        let task_obj = |name: u64| {
            obj(
                &l,
                0xa8,
                0x1_0000,
                &[(a.task_name, name), (a.task_coro, coro)],
            )
        };
        mem.add(task, task_obj(name));
        mem.add(
            name,
            with_type(&l, ascii_str(&l, "handle-order-7"), 0x2_0000),
        );
        mem.add(coro, obj(&l, 0xa0, 0x3_0000, &[(gen_name, coro_name)]));
        mem.add(coro_name, with_type(&l, ascii_str(&l, "handle"), 0x2_0000));
        let t = read_task(&mem, &l, &a, task).unwrap();
        assert_eq!(t.describe(), "task 'handle-order-7' (coro handle)");

        // An unnamed task: its name is still the counter (an int).
        let counter = 0x14_0000;
        let mut int = obj(&l, 28, 0x4_0000, &[(16, 1 << 3)]);
        int[24..28].copy_from_slice(&7u32.to_le_bytes());
        mem.add(counter, int);
        mem.add(task, task_obj(counter));
        assert_eq!(read_task(&mem, &l, &a, task).unwrap().name, "Task-7");

        // Not a task (a freed and reused address): an error, not a name.
        mem.add(task, obj(&l, 0xa8, 0x3_0000, &[]));
        assert!(read_task(&mem, &l, &a, task)
            .unwrap_err()
            .contains("not a Task"));
        assert!(read_task(&mem, &l, &a, 0xdead_0000).is_err());
    }

    #[test]
    fn small_ints_of_both_layouts() {
        let l14 = from_debug_offsets(&debug_offsets_3_14()).unwrap();
        let l11 = crate::python::code::tests::l311();
        let mut mem = SliceMemory::new();
        // 2**30 + 5: two digits.
        let mut b = vec![0u8; 32];
        b[16..24].copy_from_slice(&(2u64 << 3).to_le_bytes());
        b[24..28].copy_from_slice(&5u32.to_le_bytes());
        b[28..32].copy_from_slice(&1u32.to_le_bytes());
        mem.add(0x1000, b.clone());
        assert_eq!(read_small_int(&mem, &l14, 0x1000).unwrap(), (1 << 30) + 5);
        b[16..24].copy_from_slice(&2u64.to_le_bytes());
        mem.add(0x2000, b.clone());
        assert_eq!(read_small_int(&mem, &l11, 0x2000).unwrap(), (1 << 30) + 5);
        // Negative or huge: refused.
        b[16..24].copy_from_slice(&(-2i64).to_le_bytes());
        mem.add(0x3000, b.clone());
        assert!(read_small_int(&mem, &l11, 0x3000).is_err());
        b[16..24].copy_from_slice(&(1000u64 << 3).to_le_bytes());
        mem.add(0x4000, b);
        assert!(read_small_int(&mem, &l14, 0x4000).is_err());
    }
}
