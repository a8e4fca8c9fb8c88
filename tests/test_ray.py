"""zsfs extract --ray on a local Ray instance (2 CPUs, tiny models): same store as a local run,
whatever worker or driver is killed on the way.

One Ray instance serves the whole module (starting one takes ~15 s). Its workers decode slowly
(``zsfs.testing.slowdown``) so that a kill reliably lands in the middle of a shard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the test extra installs it: pip install -e ".[test]"

from tests.test_extract import ROW_DATASETS, read_store
from zsfs.errors import ZsfsError
from zsfs.extract import extract
from zsfs.testing.cli import run_cli
from zsfs.testing.images import write_image_folder
from zsfs.testing.models import TINY_MODEL_ARGS, TINY_MODELS
from zsfs.testing.slowdown import DELAY_VARIABLE


SLOW_WORKERS = {"worker_process_setup_hook": "zsfs.testing.slowdown.slow_decoding",
                "env_vars": {DELAY_VARIABLE: "0.03"}}
SETTINGS = dict(shard_size=6, batch_size=2, **TINY_MODELS)  # 40 files -> 7 shards


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray instance for this module; yields its address."""
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
                       runtime_env=SLOW_WORKERS)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    folder = write_image_folder(tmp_path_factory.mktemp("ray") / "photos", n_per_class=12)
    reference = extract(folder["root"], folder["root"].parent / "local.h5", workers=0, **SETTINGS)
    return {"root": folder["root"], "local": read_store(reference.output)}


def assert_same_store(path: Path, expected: dict) -> None:
    found = read_store(path)
    for name in (*ROW_DATASETS, "path", "label", "skipped"):
        np.testing.assert_array_equal(np.asarray(found[name], dtype=object), np.asarray(expected[name], dtype=object),
                                      err_msg=name)


def _shard_worker_pids() -> list[int]:
    """Ray worker processes in the middle of a shard (Ray titles them ``ray::CLASS.METHOD``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::_ShardWorker.write_shard"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_killed_worker_costs_its_shard_and_the_store_is_the_same(cluster, photos, tmp_path):
    out = tmp_path / "ray.h5"
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(summary=extract(photos["root"], out, ray="auto", ray_workers=2,
                                                                      **SETTINGS)))
    run.start()
    shards, killed = tmp_path / "ray.shards", None
    deadline = time.monotonic() + 180
    while killed is None and run.is_alive() and time.monotonic() < deadline:
        busy = _shard_worker_pids() if list(shards.glob("shard-*.h5")) else []  # models loaded, shards flowing
        killed = busy[0] if busy else None
        time.sleep(0.02)
    assert killed is not None, "no worker was caught in the middle of a shard"
    os.kill(killed, signal.SIGKILL)
    run.join(timeout=300)

    summary = done["summary"]
    assert summary.shards_redone >= 1 and summary.shards_written == 7
    assert summary.n_images == len(photos["local"]["path"])
    assert_same_store(out, photos["local"])
    assert not list(shards.glob("*.tmp"))  # the killed worker's half-written file is gone


def test_a_killed_driver_resumes_keeping_finished_shards(cluster, photos, tmp_path):
    out, shards = tmp_path / "resumed.h5", tmp_path / "resumed.shards"
    args = ["extract", str(photos["root"]), "--out", str(out), *TINY_MODEL_ARGS, "--shard-size", "6",
            "--batch-size", "2", "--ray", cluster, "--ray-workers", "2"]
    script = (f"import ray; ray.init(address={cluster!r}, runtime_env={SLOW_WORKERS!r})\n"
              f"from zsfs.cli import main; main({args!r})\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(list(shards.glob("shard-*.h5"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*.h5")}
    assert 2 <= len(finished) < 7 and not out.exists()

    time.sleep(1)  # the dead driver's workers are stopped by Ray; none may write from here on
    finished = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*.h5")}
    result = run_cli(*args[:-4], "--ray", "--ray-workers", "2")  # this process's Ray connection
    assert result.exit_code == 0, result.output
    assert f"{7 - len(finished)} / {len(finished)}" in result.output  # shards written / reused
    assert {name: (shards / name).stat().st_mtime_ns for name in finished} == finished
    assert_same_store(out, photos["local"])


def test_ray_workers_without_ray_is_refused(photos):
    with pytest.raises(ZsfsError, match="--ray-workers needs --ray"):
        extract(photos["root"], photos["root"].parent / "x.h5", ray_workers=2, **SETTINGS)
