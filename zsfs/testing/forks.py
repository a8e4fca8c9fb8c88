"""A parent that has run zsfs (its thread pools started), and a child it forks as multiprocessing's
"fork" does: what tests of the pools a fork loses run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_FORK_THE_CHILD = """
queue = multiprocessing.Queue()
process = multiprocessing.get_context("fork").Process(target=child, args=(queue,))
process.start()
process.join({timeout})
print(json.dumps([process.exitcode, queue.get(timeout=1) if process.exitcode == 0 else None]))
process.kill()
"""


def run_forked_child(parent: str, *args: str, timeout: float = 90) -> tuple[int | None, object, str]:
    """Run ``parent`` (Python code that does its work and defines ``child(queue)``; ``sys.argv[1:]``
    are ``args``) in a fresh interpreter, then ``child`` in a process forked from it. Returns the
    child's exit code (None: still running after ``timeout`` s, then killed), what it put on the
    queue (None unless it exited 0) and the interpreter's stderr."""
    code = "import json, multiprocessing\n" + textwrap.dedent(parent) + _FORK_THE_CHILD.format(timeout=timeout)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout + 240)
    if done.returncode != 0 or not done.stdout.strip():
        raise AssertionError(f"the parent failed (exit {done.returncode}): {done.stderr[-3000:]}")
    exitcode, said = json.loads(done.stdout.splitlines()[-1])
    return exitcode, said, done.stderr
