"""Process helpers for tests that start, kill and restart real processes on this machine."""

from __future__ import annotations

import os
import signal
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_session(session_id: int) -> None:
    """SIGKILL every process of one session (a process started with start_new_session=True,
    and everything it started, such as the local Ray of an `ablate` driver), nothing else."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
