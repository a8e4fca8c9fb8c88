"""zsfs extract --ray on a local Ray instance (2 CPUs, tiny models): same store as a local run,
whatever worker or driver is killed on the way.

One Ray instance serves the whole module (starting one takes ~15 s). Its workers decode slowly
(``zsfs.testing.hooks``) so that a kill reliably lands in the middle of a shard.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray  # the test extra installs it: pip install -e ".[test]"
import torch

from tests.test_extract import assert_same_store, read_store
from zsfs.errors import ParameterError, ZsfsError
from zsfs.names import counted
from zsfs.extract import extract
from zsfs.models import load_backbone, load_clip
from zsfs.store import Store
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.failures import run_zsfs
from zsfs.testing.images import write_image_folder
from zsfs.testing.models import TINY_MODEL_ARGS, TINY_MODELS
from zsfs.testing.processes import ancestors, parent_pid, titled
from zsfs.testing.hooks import (CRASH_VARIABLE, DELAY_VARIABLE, HANG_VARIABLE, HUNG_SECONDS_VARIABLE,
                                LOAD_DELAY_VARIABLE, WRITE_PAUSE_VARIABLE)

CRASHING_NAME = "crashes-the-decoder.png"  # decoding a file of this name crashes a worker's decoding process
HANGING_NAME = "hangs-the-decoder.png"  # ... and one of this name never returns (a lost network mount)
HUNG_SECONDS = 6  # the workers' HUNG_DECODE_SECONDS
PAUSE_FLAG = Path(tempfile.gettempdir()) / f"zsfs-test-ray-pause-{os.getpid()}"  # while it exists, written shards wait
SLOW_WORKERS = {"worker_process_setup_hook": "zsfs.testing.hooks.hooked_workers",
                "env_vars": {DELAY_VARIABLE: "0.06", LOAD_DELAY_VARIABLE: "0.5",  # 6 images: >= 0.36 s a shard
                             CRASH_VARIABLE: CRASHING_NAME, HANG_VARIABLE: HANGING_NAME,
                             HUNG_SECONDS_VARIABLE: str(HUNG_SECONDS), WRITE_PAUSE_VARIABLE: str(PAUSE_FLAG)}}
pytestmark = pytest.mark.xdist_group("ray")  # one Ray instance per module (the cluster fixture), in one pytest process
SETTINGS = dict(shard_size=6, batch_size=2, **TINY_MODELS)  # 40 files -> 7 shards


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray instance for this module; yields its address."""
    if any(character.isspace() for character in sys.executable):  # else every test waits for workers in vain
        pytest.fail(f"Ray cannot start workers with a runtime_env (these tests' hooks) from a Python whose path "
                    f"holds a space ({sys.executable}): its shell command leaves the path unquoted; clone the "
                    "project under a path without spaces")
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


def _shard_worker_pids() -> list[int]:
    """The Ray shard workers, not their decoding processes (forked, they carry a worker's title).
    Not by the method in the title: Ray titles a worker ``ray::_ShardWorker`` again whenever one of
    its calls ends, so one in the middle of a shard loses ``.write_shard`` the first time the driver
    asks it how far it is (on a busy machine the kill below then found only decoding processes, and
    no shard was redone)."""
    workers = titled(b"ray::_ShardWorker")
    return [pid for pid in workers if parent_pid(pid) not in workers]


def _decoding_pids() -> list[int]:
    """The decoding processes of Ray workers (they live for one shard)."""
    workers = titled(b"ray::_ShardWorker")
    return [pid for pid in workers if parent_pid(pid) in workers]


def _kill_the_first(find: Callable[[], list[int]], running: threading.Thread, deadline: float, pause: float) -> None:
    """kill -9 the first process ``find`` names while ``running`` runs; fail if none shows by ``deadline``."""
    killed = None
    while killed is None and running.is_alive() and time.monotonic() < deadline:
        found = find()
        killed = found[0] if found else None
        time.sleep(pause)
    assert killed is not None, "no process was caught in the middle of a shard"
    os.kill(killed, signal.SIGKILL)


def test_killed_driver_then_killed_worker_still_give_the_local_store(cluster, photos, tmp_path, monkeypatch):
    """A driver killed (kill -9) -> the rerun keeps its finished shards; a worker killed in the
    middle of a shard during that rerun -> the shard is redone; the store is the local run's."""
    # the rerun's driver asks its workers how far they are all the time, as a busy machine's did
    # before the kill (a worker's title then no longer names its shard: _shard_worker_pids)
    monkeypatch.setattr("zsfs.distributed.PROGRESS_SECONDS", 0.02)
    out, shards = tmp_path / "ray.h5", tmp_path / "ray.shards"
    args = ["extract", str(photos["root"]), "--out", str(out), *TINY_MODEL_ARGS, "--shard-size", "6",
            "--batch-size", "2", "--ray", cluster, "--ray-workers", "1"]
    script = (f"import ray; ray.init(address={cluster!r}, runtime_env={SLOW_WORKERS!r})\n"
              f"from zsfs.cli import main; main({args!r})\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(shards.glob("shard-*.h5")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    # Ray stops the dead driver's workers; none may write from here on, nor be the worker killed
    # below (on a busy machine they outlived a fixed 1 s wait, and the rerun's workers were spared)
    while titled(b"ray::_ShardWorker") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not titled(b"ray::_ShardWorker"), "the killed driver's Ray workers lived on"
    finished = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*.h5")}
    assert 1 <= len(finished) <= 4 and not out.exists()
    left_by_the_driver = set(shards.glob("*.tmp"))

    done: dict = {}
    PAUSE_FLAG.touch()  # the rerun's shards wait, written, in their temporary files
    try:
        rerun = threading.Thread(target=lambda: done.update(result=run_cli(*args[:-4], "--ray", "--ray-workers", "2")))
        rerun.start()  # `--ray` alone, in this process: its Ray connection (slow decoding) is used
        while not set(shards.glob("*.tmp")) - left_by_the_driver and rerun.is_alive() \
                and time.monotonic() < deadline + 120:
            time.sleep(0.02)
        busy = _shard_worker_pids()
        assert busy, "no worker was caught in the middle of a shard"
        for pid in busy:  # kill -9 in the middle of their shards: one of them holds a temporary file
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        left = set(shards.glob("*.tmp")) - left_by_the_driver
        assert left, "no temporary shard file was left to clean"
    finally:
        PAUSE_FLAG.unlink(missing_ok=True)
    rerun.join(timeout=300)

    result = done["result"]
    assert result.exit_code == 0, result.output
    assert f"{7 - len(finished)} / {len(finished)}" in result.output  # shards written / reused
    assert re.search(r"shards redone \(worker lost\)\s+\S*\s*[1-9]", result.output), result.output
    assert {name: (shards / name).stat().st_mtime_ns for name in finished} == finished  # kept, not redone
    assert_same_store(out, photos["local"])
    assert not list(shards.glob("*.tmp"))  # the killed workers' unfinished files are gone (review: none was shown to exist)


def test_sigterm_while_the_driver_waits_on_ray_stops_as_sigterm(photos, tmp_path):
    """Bug: SIGTERM landing while the driver waited inside Ray's C++ code (ray.get, ray.wait) came
    back from Ray as a plain KeyboardInterrupt: exit 130 and "Interrupted.", where `timeout` and
    Slurm expect 143 and the README says "Terminated (SIGTERM).". Here it lands while the
    workers of `--ray local` (a Ray instance of the driver's own) load the models."""
    args = ["extract", str(photos["root"]), "--out", str(tmp_path / "ray.h5"), *TINY_MODEL_ARGS, "--ray", "local",
            "--ray-workers", "1"]
    driver = subprocess.Popen([sys.executable, "-c", f"from zsfs.cli import main; main({args!r})"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while driver.poll() is None and time.monotonic() < deadline and not any(
            driver.pid in ancestors(pid) for pid in titled(b"ray::_ShardWorker")):
        time.sleep(0.01)
    assert driver.poll() is None, driver.stderr.read().decode()
    driver.send_signal(signal.SIGTERM)
    said = driver.communicate(timeout=120)[1].decode()
    assert driver.returncode == 128 + signal.SIGTERM, said
    assert "Terminated (SIGTERM). Nothing half-written was left; a rerun resumes where this one stopped." in said


def test_a_killed_decoding_process_costs_only_its_shard(cluster, photos, tmp_path):
    """Bug: kill -9 of a Ray worker's decoding process (the out-of-memory killer's way) stopped the
    whole run with torch's traceback; now its shard is computed again, as a lost worker's is."""
    out = tmp_path / "ray.h5"
    args = ["extract", photos["root"], "--out", out, *TINY_MODEL_ARGS, "--shard-size", "6", "--batch-size", "2",
            "--workers", "1", "--ray", "--ray-workers", "1"]
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(result=run_cli(*args)))
    run.start()
    _kill_the_first(_decoding_pids, run, time.monotonic() + 180, pause=0.005)  # at once: its shard is still to decode
    run.join(timeout=300)

    result = done["result"]
    assert result.exit_code == 0, result.output
    assert re.search(r"shards redone \(worker lost\)\s+\S*\s*[1-9]", result.output), result.output
    assert_same_store(out, photos["local"])


def test_a_worker_killed_while_it_loads_the_models_is_replaced(cluster, photos, tmp_path):
    """Bug: kill -9 of a Ray worker outside a shard (loading the models, where running out of
    memory is likeliest; embedding the class names) ended the run with Ray's traceback."""
    out = tmp_path / "ray.h5"
    args = ["extract", photos["root"], "--out", out, *TINY_MODEL_ARGS, "--shard-size", "6", "--batch-size", "2",
            "--ray", "--ray-workers", "1"]
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(result=run_cli(*args)))
    run.start()
    _kill_the_first(lambda: titled(b"ray::_ShardWorker.__init__"), run, time.monotonic() + 180, pause=0.01)
    run.join(timeout=300)
    result = done["result"]
    assert result.exit_code == 0, result.output
    assert_same_store(out, photos["local"])


def test_model_files_named_from_the_commands_folder_reach_the_workers(cluster, tmp_path, monkeypatch):
    """Walkthrough bug: a relative --clip-model, --clip-weights or --backbone-weights was looked up
    in each Ray worker's working folder ("CLIP model config file ... not found" on a cluster started
    from another folder); the workers of this module's cluster work in the folder pytest started in."""
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(TINY_MODELS["clip_model"], here / "my-clip.json")
    clip, backbone = load_clip(TINY_MODELS["clip_model"], "random"), load_backbone(TINY_MODELS["backbone"], "random")
    torch.save(clip.model.state_dict(), here / "clip.pt")
    torch.save(backbone.model.state_dict(), here / "backbone.pth")
    monkeypatch.chdir(here)
    assert Path.cwd() != Path(ray.get(ray.remote(lambda: os.getcwd()).remote()))  # else this test could not fail
    from ray._private import worker as ray_worker

    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda *args, **kwargs: None)  # as before any zsfs run
    relative = ["--clip-model", "my-clip.json", "--clip-weights", "clip.pt", "--backbone", TINY_MODELS["backbone"],
                "--backbone-weights", "backbone.pth"]
    few = write_image_folder(tmp_path / "few", n_per_class=1)["root"]
    by_ray = run_cli("extract", few, "--out", tmp_path / "ray.h5", *relative, "--ray", "--ray-workers", "1")
    assert by_ray.exit_code == 0, output_text(by_ray)
    local = run_cli("extract", few, "--out", tmp_path / "local.h5", *relative, "--workers", "0")
    assert local.exit_code == 0, output_text(local)
    stored, expected = read_store(tmp_path / "ray.h5"), read_store(tmp_path / "local.h5")
    for key in ("clip", "backbone"):
        np.testing.assert_array_equal(stored[key], expected[key])
    with Store(tmp_path / "ray.h5") as store:
        assert store.backbone_info["file"] == str(here / "backbone.pth")
    assert getattr(ray_worker.print_to_stdstream, "to_stderr", False)  # `extract --ray` sent Ray's lines to stderr


def test_rays_messages_go_to_stderr_not_stdout(cluster, tmp_path, capfd):
    """Walkthrough: Ray's "(raylet) A worker died or was killed ..." came on stdout, in colour,
    where zsfs writes only data; here is the function Ray's message thread calls, as `extract
    --ray` leaves it (that it does: the test above)."""
    from ray._private import worker as ray_worker

    from zsfs.ray_cluster import ray_messages_to_stderr

    ray_messages_to_stderr()  # what `extract --ray` calls first (a second call changes nothing)
    ray_messages_to_stderr()
    capfd.readouterr()
    ray_worker.print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)
    said = capfd.readouterr()
    assert "A worker died" in said.err and said.out == ""


def test_a_model_a_ray_worker_cannot_load_is_one_clear_line(cluster, photos, tmp_path):
    """Bug: the worker's error (here a weights file that is not there) came back as Ray's
    'actor died' traceback, without zsfs' message."""
    missing = tmp_path / "gone.safetensors"
    args = [arg for arg in TINY_MODEL_ARGS if not arg.startswith("--backbone-weights")]
    result = run_cli("extract", photos["root"], "--out", tmp_path / "ray.h5", *args, "--backbone-weights", missing,
                     "--ray", "--ray-workers", "1")
    said = output_text(result)
    assert result.exit_code == 1 and "Traceback" not in said and "ActorDied" not in said, said
    # one error, said last (after the note of a wait that lasted 10 s, on a slow machine: the test read
    # the whole output as one line, and failed when that note came first)
    assert said.count("Error:") == 1 and said.split("Error: ")[1].startswith("backbone weights file "), said
    assert said.endswith(f"{missing} not found; check the --backbone-weights path."), said


@pytest.mark.parametrize(("relative", "what", "reason"), [
    (f"green/{CRASHING_NAME}", "crashed", "crashes the image decoder (killed by SIGSEGV)"),
    (f"red/{HANGING_NAME}", "hung", f"still decoding after {HUNG_SECONDS} s (a hung read or decoder)"),
])
def test_a_file_that_crashes_or_hangs_a_workers_decoding_is_set_aside_as_in_a_local_run(cluster, tmp_path, relative,
                                                                                         what, reason):
    """Each worker sets such a file aside as a local run does (a hung read after the workers'
    ``HUNG_DECODE_SECONDS``), and the driver's summary names it. Bug: a Ray run said nothing of them."""
    written = write_image_folder(tmp_path / "photos", n_per_class=4)
    folder = written["root"]
    shutil.copy(sorted(folder.glob("*/*.png"))[0], folder / relative)
    out = tmp_path / "ray.h5"
    result = run_cli("extract", folder, "--out", out, *TINY_MODEL_ARGS, "--shard-size", "6", "--batch-size", "2",
                     "--workers", "1", "--ray", "--ray-workers", "1")
    assert result.exit_code == 0, result.output
    assert f"1 file {what} the image decoder and was set aside (skipped): {relative}." in " ".join(
        output_text(result).split()), result.output
    with Store(out) as store:
        skipped = dict(zip(*store.skipped()))
        embedded = set(store.paths())
    assert skipped[relative] == reason
    assert embedded == set(written["good"])  # every other image is in the store


def test_more_workers_than_the_cluster_can_hold_is_refused_not_a_silent_wait(cluster, photos, tmp_path):
    """Bug: --ray-workers 4 on a 2-CPU cluster waited forever, without a word, for CPUs to free up."""
    with pytest.raises(ParameterError, match=r"ray_workers 3 is more than the Ray cluster's 2 CPUs"):
        extract(photos["root"], tmp_path / "x.h5", ray="auto", ray_workers=3, **SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_cuda_on_a_cluster_without_a_gpu_is_a_bad_argument_as_without_ray(cluster, photos, tmp_path):
    """Bug (new user): exit status 1 with --ray, where the same --device cuda without a GPU is 2."""
    result = run_cli("extract", photos["root"], "--out", tmp_path / "x.h5", "--ray", "auto", "--device", "cuda",
                     *TINY_MODEL_ARGS)
    assert result.exit_code == 2, output_text(result)
    assert "--device cuda with --ray, but the Ray cluster has no GPU; use --device cpu" in output_text(result)
    assert list(tmp_path.iterdir()) == []


def test_ray_options_refused_clearly(photos, monkeypatch, tmp_path):
    with pytest.raises(ZsfsError, match="ray_workers needs ray"):
        extract(photos["root"], photos["root"].parent / "x.h5", ray_workers=2, **SETTINGS)
    # Bug: ray_workers=0 from Python was refused by the Ray pool, after the output's lock file was made.
    with pytest.raises(ZsfsError, match="ray_workers must be at least 1"):
        extract(photos["root"], tmp_path / "x.h5", ray="local", ray_workers=0, **SETTINGS)
    assert list(tmp_path.iterdir()) == []
    import zsfs.ray_cluster

    monkeypatch.setattr(zsfs.ray_cluster, "ray", None)  # as in a core install, without Ray
    monkeypatch.chdir(tmp_path)  # where the default output ./photos.h5 would go
    result = run_cli("extract", photos["root"], *TINY_MODEL_ARGS, "--ray", "local")
    assert result.exit_code == 1 and 'pip install -e ".[ray]" in the zsfs checkout' in output_text(result)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written, not even the store's lock file


def test_an_address_where_no_cluster_answers_is_one_line_at_once(photos, tmp_path):
    """Bug: `--ray 127.0.0.1:1` left Ray retrying for minutes, printing its own warnings."""
    outcome = run_zsfs("extract", photos["root"], "--out", tmp_path / "x.h5", *TINY_MODEL_ARGS, "--ray", "127.0.0.1:1",
                       timeout=120)  # a hang is a failure, not a wait
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert "no Ray cluster at '127.0.0.1:1' (Connection refused)" in output_text(outcome)
    assert len(outcome.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_address_where_another_server_answers_is_one_line_at_once(photos, tmp_path):
    """Bug: `--ray HEAD:8265` (the dashboard's port, an HTTP server) passed the TCP check and left
    Ray retrying for minutes, printing its own warnings."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def answer_as_http() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    connection.recv(1024)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer_as_http, daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        outcome = run_zsfs("extract", photos["root"], "--out", tmp_path / "x.h5", *TINY_MODEL_ARGS, "--ray", address,
                           timeout=60)  # a hang is a failure, not a wait
    finally:
        done.set()
        thread.join()
        server.close()
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert f"no Ray cluster at '{address}' (something answers there, but not a Ray cluster" in output_text(outcome)
    assert len(outcome.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_ray_client_address_without_its_package_and_a_token_cluster_get_advice_that_fits(cluster, photos, tmp_path,
                                                                                           monkeypatch):
    """Review: `--ray ray://HOST:PORT` without Ray Client's package said "is not a Ray cluster
    address ... start one with ray start"; a cluster refusing a client that sends no auth token
    said "no Ray cluster ... start one", while one ran."""
    from zsfs.ray_cluster import _token_hint

    address = "ray://" + cluster  # a real server that answers (the cluster's GCS); this venv has no ray[client]
    outcome = run_zsfs("extract", photos["root"], "--out", tmp_path / "x.h5", *TINY_MODEL_ARGS, "--ray", address,
                       timeout=120)
    said = " ".join(output_text(outcome).split())
    assert outcome.returncode == 1 and f"{address!r} is a Ray Client address, which needs Ray's client package: " \
        "pip install 'ray[client]'" in said and "start one" not in said, outcome.output
    token = tmp_path / "auth_token"
    token.write_text("secret")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert _token_hint().startswith(f"if the cluster uses token authentication (a cluster started where {token} "
                                    "exists does), rerun with RAY_AUTH_MODE=token set")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert _token_hint() == ""  # it was sent: the advice would be wrong


def test_no_cluster_to_join_here_is_said_with_zsfs_options(monkeypatch, tmp_path):
    """Review: `--ray` with no cluster running quoted Ray's "setting --address flag" (no zsfs option)
    and the token advice, which cannot help where no cluster runs."""
    from zsfs.ray_cluster import _join_failure

    token = tmp_path / "auth_token"
    token.write_text("secret")  # the token advice applies to a cluster that refused, not to none at all
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    none_here = ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                                "setting `--address` flag or `RAY_ADDRESS` environment variable.")
    assert _join_failure("auto", none_here, "start one") == "no Ray cluster runs on this machine for --ray to join; " \
                                                           "start one"
    # the text matched is Ray's own (the real path takes ~6 s and would join another test's cluster here)
    import inspect

    import ray._private.services

    assert "Could not find any running Ray instance" in inspect.getsource(ray._private.services)
    refused = ConnectionError("Failed to connect to GCS")
    assert _join_failure("10.0.0.1:6379", refused, "start one").startswith(
        "could not join a Ray cluster at '10.0.0.1:6379' (Failed to connect to GCS); if the cluster uses token")


def test_the_address_check_passes_a_real_cluster_and_names_what_else_answers(cluster):
    """Review: no test ran the check against a real cluster's GCS (a check refusing every cluster
    would have passed), and a tunnel whose far end is down or a silent server got the advice meant
    for a dashboard's port."""
    from zsfs.ray_cluster import _unreachable

    assert _unreachable(cluster) is None and _unreachable(f"ray://{cluster}") is None  # both speak gRPC
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections (the kernel's backlog), never answers
        assert _unreachable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) == (
            "a connection is taken there, but nothing answered in 0.5 s (an overloaded head, or a tunnel whose far end "
            "is down?)")
    with socket.create_server(("127.0.0.1", 0)) as closing:
        thread = threading.Thread(target=lambda: closing.accept()[0].close(), daemon=True)
        thread.start()
        assert _unreachable(f"127.0.0.1:{closing.getsockname()[1]}").startswith(
            "a connection is taken there, then closed without an answer")
        thread.join()


def test_an_address_ray_cannot_parse_is_one_line():
    """Bug: `ray="bogus"` raised Ray's own ValueError. A process of its own: this one may be connected."""
    script = ("from zsfs.ray_cluster import _start_or_join\n"
              "from zsfs.errors import ZsfsError\n"
              "try:\n    _start_or_join('bogus')\nexcept ZsfsError as error:\n    print(error)\n")
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    assert said.startswith("'bogus' is not a Ray cluster address (Invalid address format: bogus); start one"), said


def test_more_local_workers_than_cores_are_refused_before_ray_starts(photos, tmp_path, monkeypatch):
    """Bug: `--ray local --ray-workers 3` on 2 cores was refused only once a local Ray had started (15 s)."""
    too_many = (os.cpu_count() or 1) + 1
    ray_temp = tmp_path / "ray-temp"  # where a local Ray would make its session folder (ray/session_...)
    ray_temp.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(ray_temp))
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_zsfs("extract", photos["root"], "--out", out / "x.h5", *TINY_MODEL_ARGS, "--ray", "local",
                       "--ray-workers", too_many, timeout=120)
    assert list(ray_temp.iterdir()) == [], "a local Ray instance was started first"
    assert outcome.returncode == 2 and outcome.problems == [], outcome.output
    assert f"--ray-workers {too_many} is more than this machine's {counted(os.cpu_count(), 'CPU')}" in outcome.output
    assert "Ray" not in outcome.output.replace("--ray", "")  # no line of a Ray instance starting
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", ["argument", "working folder"])
def test_a_name_ray_cannot_take_as_text_is_one_line_before_ray_starts(photos, tmp_path, monkeypatch, where):
    """Bug: an output (or source) whose name is not UTF-8, or such a working folder, with --ray made
    ray.init fail in its core with a UnicodeEncodeError traceback, once a local Ray had started."""
    ray_temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: a Ray started there needs socket paths < 108 bytes
    monkeypatch.setenv("RAY_TMPDIR", str(ray_temp))
    odd = tmp_path / os.fsdecode(b"caf\xe9 folder")
    odd.mkdir()
    shown = str(odd).replace(os.fsdecode(b"\xe9"), "\\xe9")
    out, cwd, said = ((odd / "x.h5", tmp_path, f"Ray cannot start with the argument {shown}/x.h5 on the command line")
                      if where == "argument" else
                      (tmp_path / "x.h5", odd, f"Ray cannot start in the working folder {shown}:"))
    outcome = run_zsfs("extract", photos["root"], "--out", out, *TINY_MODEL_ARGS, "--ray", "local", cwd=cwd,
                       timeout=300)
    started = list(ray_temp.iterdir())
    shutil.rmtree(ray_temp, ignore_errors=True)
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert said in output_text(outcome), outcome.output
    assert started == [], "a local Ray instance was started first"
    assert list(odd.iterdir()) == [] and not out.exists()


def test_ray_local_starts_its_own_instance_whatever_ray_address_says(photos, tmp_path, monkeypatch):
    """Bug: `--ray local` called ray.init() without an address, which joins RAY_ADDRESS (set in
    every KubeRay pod) or the last `ray start` of the machine: here an address where nothing
    answers, where it hung on Ray's retries."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    out = tmp_path / "ray.h5"
    outcome = run_zsfs("extract", photos["root"], "--out", out, *TINY_MODEL_ARGS, "--ray", "local",
                       "--ray-workers", "1", timeout=300)
    assert outcome.returncode == 0, outcome.output
    assert_same_store(out, photos["local"])
    # walkthrough: Ray's "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled
    # to opt out..." came first on every run: the safe state, and nothing for the user to do
    assert "Token authentication is enabled" not in outcome.output, outcome.output


def test_joining_ray_keeps_this_processs_sigterm_handler(cluster):
    """Bug: `ray.init` made SIGTERM a bare sys.exit(15) in the driver, so `zsfs extract --ray`
    stopped by SIGTERM said nothing and exited 15, not as the README says (one line, exit 143)."""
    script = ("import signal, ray\nfrom zsfs.ray_cluster import connect\n"
              "def mine(number, frame): pass\n"
              "signal.signal(signal.SIGTERM, mine)\n"
              f"connect({cluster!r})\n"
              "print('kept' if signal.getsignal(signal.SIGTERM) is mine else signal.getsignal(signal.SIGTERM))\n"
              "ray.shutdown()\n")
    joined = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0 and joined.stdout.strip() == "kept", joined.stdout + joined.stderr


def test_every_worker_gets_its_cores_on_one_node():
    """Bug: nodes of 4, 1 and 1 cores with 2 workers got 3 cores each (6 // 2), which one node
    alone has: the second worker waited for a node, without a word."""
    from zsfs.ray_cluster import cores_per_worker

    assert cores_per_worker([4, 1, 1], 2) == 2
    assert cores_per_worker([4, 1, 1], 6) == 1
    assert cores_per_worker([8, 8], 4) == 4 and cores_per_worker([8, 8], 3) == 4
    assert cores_per_worker([2], 3) is None
    for nodes in ([4, 1, 1], [3, 5], [16], [2, 2, 7]):  # brute force: the largest c with n workers placed
        for n in range(1, sum(nodes) + 1):
            best = max(c for c in range(1, sum(nodes) + 1) if sum(cpus // c for cpus in nodes) >= n)
            assert cores_per_worker(nodes, n) == min(best, sum(nodes) // n)


def _command_line(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read()


def test_the_process_finder_names_only_this_sessions_processes(tmp_path):
    """Bug: a Ray worker of another test session on the same machine (two checkouts tested at
    once) was found by its title and killed by this session's test, failing that session's run."""
    title = f"zsfs-finder-test-{os.getpid()}"
    sleeper = "import time; time.sleep(60)"
    ours = subprocess.Popen(["bash", "-c", f'exec -a {title} "$0" -c "{sleeper}"', sys.executable])
    # another session's: its parent exits at once, so it is no descendant of this process
    subprocess.run(["bash", "-c", f'(exec -a {title} "$0" -c "{sleeper}" & echo $! > {tmp_path}/other)',
                    sys.executable], check=True)
    other = int((tmp_path / "other").read_text())
    try:
        deadline = time.monotonic() + 30
        while not all(_command_line(pid).startswith(title.encode()) for pid in (ours.pid, other)):
            assert time.monotonic() < deadline, "the two processes did not take the title"
            time.sleep(0.02)
        assert titled(title.encode()) == [ours.pid]
    finally:
        ours.kill()
        os.kill(other, signal.SIGKILL)
        ours.wait()
