"""Types of the native half of aiodebug_heartbeat (src/aiodebug-py/src/lib.rs)."""

from typing import Final, Optional

CRATE_VERSION: Final[str]
POLL_NAME_CAP: Final[int]
POLL_FILE_CAP: Final[int]

class Heartbeat:
    """A registered event loop: one slot of the registry."""

    def __init__(self, name: str, period: float) -> None: ...
    def tick_with_lag(self, lag: float) -> None: ...
    def tick(self) -> None: ...
    def set_thread_loop(self) -> None: ...
    def close(self) -> None: ...
    @property
    def registered(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def period(self) -> float: ...

def poll_begin(task: str, file: str, line: int) -> None:
    """Marks the start of a callback on this thread (task cut to 32 bytes,
    file to its last 48)."""

def poll_end() -> Optional[float]:
    """Ends the innermost poll; its duration in seconds, or None."""

def abi_version() -> tuple[int, int]:
    """(major, minor) of the registry ABI written."""

def refused_registrations() -> int:
    """Registrations refused because all 64 slots were taken."""

def refused_poll_threads() -> int:
    """Threads refused a poll board entry (64 entries)."""
