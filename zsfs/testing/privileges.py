"""Run Python code in a child process where file permissions apply, also as root.

CI runs as root, and root reads and writes through ``chmod 000``: a test of an unreadable folder or
an unwritable output would pass without exercising anything. The child drops the two capabilities
that let root ignore permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from its bounding set
before it starts Python, so the kernel itself refuses, exactly as for any other user.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
PR_CAPBSET_DROP = 24


def _drop_permission_overrides() -> None:  # runs in the child, between fork and exec
    if os.geteuid() != 0:
        return  # permissions already apply
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot drop capability {capability}: {os.strerror(error)}")


def run_python_unprivileged(code: str, *, cwd: str | os.PathLike | None = None,
                            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c code`` with file permissions enforced; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_drop_permission_overrides)
