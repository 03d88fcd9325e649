"""Is the process that started something still running? For runs left RUNNING and work claimed by a
process that was killed (kill -9 leaves no chance to clean up)."""
from __future__ import annotations

import os
import socket
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The process's start time since boot (clock ticks), or None if there is no such process: with the
    pid it names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me() -> str:
    """host:pid:start of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid()) or ''}"


def alive(who: str) -> bool | None:
    """True or False for a process of this host; None (cannot tell) for another host's."""
    host, pid, start = who.rsplit(":", 2)
    if host != socket.gethostname():
        return None
    return process_start(int(pid)) == start
