"""Helpers for the tests that run real child processes and SIGKILL them (not collected)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(child: subprocess.Popen[bytes], ready: Callable[[], bool], waiting_for: Callable[[], str],
              timeout: float = 120) -> None:
    """Poll ``ready()`` until it holds, then SIGKILL ``child``; fail (and kill) if the child dies
    first or ``timeout`` seconds pass, saying what it was ``waiting_for()``."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert child.poll() is None, "the child died before it was killed"
            assert time.monotonic() < deadline, waiting_for()
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
