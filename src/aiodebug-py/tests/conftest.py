"""Fixtures of the package's tests (run by scripts/test-python in a venv with
the package pip-installed from the checkout)."""

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

import aiodebug_heartbeat

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def watch_bin() -> Path:
    """The aiodebug-watch binary: $AIODEBUG_WATCH, or the workspace's debug build."""
    path = Path(os.environ.get("AIODEBUG_WATCH", ROOT / "target/debug/aiodebug-watch"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"no aiodebug-watch at {path}: run `cargo build -p aiodebug-watch` or set AIODEBUG_WATCH")
    return path


@pytest.fixture
def status(watch_bin):
    """Runs `aiodebug-watch status <this process> --json`; returns (exit code,
    loop objects, process object)."""

    def read(*extra: str):
        out = subprocess.run(
            [str(watch_bin), "status", str(os.getpid()), "--json", *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        loops = [line for line in lines if line["event"] == "loop"]
        process = [line for line in lines if line["event"] == "process"]
        assert process, f"no process line: {out.stdout!r} {out.stderr!r}"
        return out.returncode, loops, process[0]

    return read


@pytest.fixture(autouse=True)
def nothing_left_installed():
    """Every test disables what it enabled: the Handle wrapper is gone after."""
    original = asyncio.events.Handle._run
    yield
    assert asyncio.events.Handle._run is original
    assert not aiodebug_heartbeat._marked and aiodebug_heartbeat._slow_threshold is None
