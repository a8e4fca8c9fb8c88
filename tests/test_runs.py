"""The run folder: written complete or not at all, read back by one loader, no debris after kill -9."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from zsfs import runs
from zsfs.errors import ParameterError, ZsfsError
from zsfs.evaluate import fit_metrics
from zsfs.run_summary import cycle_rows, summary_rows
from zsfs.runs import FittedRun, load_run
from zsfs.fit import FitConfig, fit_store
from zsfs.outputs import FolderExistsError, new_folder
from zsfs.store import Store
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.failures import RUN_CLI, run_zsfs
from zsfs.testing.processes import STOPPED_BY, read_until, started, stop, wait_for
from zsfs.testing.synthetic import make_synthetic_store

# A process that opens a new folder, fills it, says where it is, then waits to be killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from zsfs.outputs import new_folder
    with new_folder(sys.argv[1]) as tmp:
        (tmp / "half-written").write_text("x")
        print(repr(str(tmp)), flush=True)  # repr: a name may hold a newline
        time.sleep(600)
""")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    store_path = make_synthetic_store(root / "s.h5", 300, 3, n_ood_classes=1, seed=0, clip_dim=32, backbone_dim=64)
    config = FitConfig(k=4, candidates=20, cycle_epochs=2)
    with Store(store_path) as store:
        return FittedRun.from_fit(fit_store(store, config), store, config).save(root / "run").path


def test_a_saved_run_reads_back(run_dir):
    run = runs.load_run(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([runs.PREDICTIONS, runs.CLASSIFIER, runs.CONFIG,
                                                               runs.METRICS])
    assert run.config["classes"] == run.classifier.classes == ["class_0000", "class_0001", "class_0002"]
    assert run.config["parameters"]["k"] == 4
    frame = run.predictions
    assert run.metrics["n_images"] == 300
    listed = frame.filter(pl.col("label").is_in(run.config["classes"]))  # not the OOD class's images
    assert run.metrics["n_evaluated"] == listed.height < 300
    assert run.metrics["accuracy"] == pytest.approx((listed["predicted"] == listed["label"]).mean())
    assert frame.height == 300 and frame["is_seed"].sum() == 12
    # Columns that the run lacks are left out rather than failing: readers tolerate older runs.
    assert run.read_predictions(["path", "ood_score", "no_such_column"]).columns == ["path", "ood_score"]
    # walkthrough: none of them there was "it is another run's file"; a string was read as its letters
    assert runs.load_run(run.path).read_predictions(["no_such_column"]).shape == (0, 0)
    for wrong in ("predicted", 5, (name for name in ["path"])):
        with pytest.raises(ParameterError, match="^columns must be a list of column names, not "):
            run.read_predictions(wrong)


def test_loading_what_is_not_a_run_is_a_clear_error(run_dir, tmp_path):
    with pytest.raises(ZsfsError, match="missing does not exist; pass a run folder"):
        runs.load_run(tmp_path / "missing")
    with pytest.raises(ZsfsError, match="has no config.json"):
        runs.load_run(tmp_path)
    (tmp_path / runs.CONFIG).write_text("{not json")
    with pytest.raises(ZsfsError, match="config.json is unreadable"):
        runs.load_run(tmp_path)
    (tmp_path / runs.CONFIG).write_text("[1, 2]")  # bug: valid JSON but no object crashed the report
    with pytest.raises(ZsfsError, match="holds a JSON list, not the object zsfs fit writes"):
        runs.load_run(tmp_path)
    for classes, shown in ((5, "5"), (None, "None"), ([], r"\[\]")):  # bug: a TypeError in the report
        (tmp_path / runs.CONFIG).write_text(json.dumps({} if classes is None else {"classes": classes}))
        with pytest.raises(ZsfsError, match=f"lists no class names under \"classes\" \\(it holds {shown}\\)"):
            runs.load_run(tmp_path)
    assert runs.FittedRun(None, {"classes": ["a"]}).metrics is None  # not saved: nothing to read
    (tmp_path / runs.CONFIG).write_text(json.dumps({"classes": ["a"]}))
    run = runs.load_run(tmp_path)
    assert run.metrics is None
    (tmp_path / runs.METRICS).write_text("{damaged")  # bug: refused every use of the run, predict's too
    run = runs.load_run(tmp_path)
    with pytest.raises(ZsfsError, match="metrics.json is unreadable"):
        run.metrics
    with pytest.raises(ZsfsError, match="no predictions.parquet"):
        run.predictions
    with pytest.raises(ZsfsError, match="no classifier"):
        run.classifier


def test_an_existing_run_is_never_overwritten(run_dir):
    before = (run_dir / runs.CONFIG).read_bytes()
    with pytest.raises(ZsfsError, match="already exists"):
        with new_folder(run_dir):
            pass
    assert (run_dir / runs.CONFIG).read_bytes() == before


def test_an_empty_folder_made_while_the_results_are_written_is_not_replaced(tmp_path):
    """os.rename replaces an empty folder on POSIX: one made at the target meanwhile (another run
    starting, a user's mkdir) is refused at the end, not silently taken over."""
    from zsfs.outputs import FolderExistsError

    target = tmp_path / "run"
    with pytest.raises(FolderExistsError, match="already exists"):
        with new_folder(target) as tmp:
            (tmp / "metrics.json").write_text("{}")
            target.mkdir()
    assert target.is_dir() and list(target.iterdir()) == [] and list(tmp_path.iterdir()) == [target]


def _hold_a_new_folder(target) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
    return child, ast.literal_eval(child.stdout.readline())


def test_the_next_run_removes_what_a_killed_run_left_but_not_a_live_runs_folder(tmp_path):
    killed, killed_tmp = _hold_a_new_folder(tmp_path / "killed")
    live, live_tmp = _hold_a_new_folder(tmp_path / "live")
    try:
        assert str(killed.pid) in killed_tmp and os.path.isdir(killed_tmp) and os.path.isdir(live_tmp)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()  # reaped: its pid no longer exists
        assert os.path.isdir(killed_tmp)  # kill -9 leaves the folder behind
        # A folder another host's process is filling on a shared file system: not ours to judge.
        elsewhere = tmp_path / f".other.{killed.pid}-some-other-host.abcd1234.tmp"
        elsewhere.mkdir()
        unrelated = tmp_path / ".notes.tmp"
        unrelated.mkdir()

        with new_folder(tmp_path / "next") as tmp:
            (tmp / "done").write_text("y")

        assert not os.path.exists(killed_tmp)
        assert os.path.isdir(live_tmp) and os.path.isfile(os.path.join(live_tmp, "half-written"))
        assert elsewhere.is_dir() and unrelated.is_dir()
        assert (tmp_path / "next" / "done").read_text() == "y"
        assert not (tmp_path / "killed").exists() and not (tmp_path / "live").exists()
    finally:
        live.kill()
        live.wait()
        killed.stdout.close()
        live.stdout.close()


def test_a_killed_writers_folder_whose_pid_another_process_was_given_is_removed(tmp_path):
    """Failure test: a kill -9'd fit's temporary folder blocked its --out ("another zsfs process (pid N)
    is writing") for as long as any process was given pid N. Its lock, not its pid, decides once the
    folder is older than any writer's lock-taking; a newer one keeps the pid's benefit of the doubt."""
    from zsfs.outputs import LOCKED_FROM, _host, check_new_folder

    given = subprocess.Popen(["sleep", "600"])  # a process holding the pid in the killed writer's name
    try:
        old = tmp_path / f".zz.{given.pid}-{_host()}.abcdefgh.tmp"
        old.mkdir()
        (old / "half-written").write_text("x")
        young = tmp_path / f".yy.{given.pid}-{_host()}.abcdefgh.tmp"
        young.mkdir()
        made = time.time() - LOCKED_FROM - 5
        os.utime(old, (made, made))
        check_new_folder(tmp_path / "zz")  # bug: refused
        with pytest.raises(FolderExistsError, match=f"another zsfs process \\(pid {given.pid}\\) is writing"):
            check_new_folder(tmp_path / "yy")  # its writer may not have locked it yet
        with new_folder(tmp_path / "next"):
            pass
        assert not old.exists() and young.is_dir()
    finally:
        given.kill()
        given.wait()


def test_a_live_runs_folder_is_kept_where_its_pid_means_nothing_here(tmp_path):
    """Review: a fit in another container on the same host name and volume (its own pid namespace)
    had its half-saved run removed by a report written here, whose process list lacks that pid:
    the fit then failed after all its work. The writer now holds its temporary folder locked."""
    from zsfs.outputs import _alive, _in_use

    pid = next(candidate for candidate in range(4000, 30000) if not _alive(candidate))  # no process here
    namespace = ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child"] + (
        [] if os.geteuid() == 0 else ["--map-root-user"])
    # the holder forked right after the namespace's last pid is set to pid - 1 gets that pid
    holder = subprocess.Popen([*namespace, "sh", "-c", f'echo {pid - 1} > /proc/sys/kernel/ns_last_pid; '
                               f'"$0" -c "$1" "$2" & wait', sys.executable, HOLDER, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read()
        held = ast.literal_eval(line)
        assert f".run.{pid}-" in held, held
        assert not _alive(pid)  # to this process, its writer is gone
        with new_folder(tmp_path / "report") as tmp:  # bug: removed the other's folder
            (tmp / "done").write_text("y")
        assert os.path.isfile(os.path.join(held, "half-written"))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        holder.stderr.close()
    # gone for good (the namespace's processes end with it): the next writer removes its folder
    deadline = time.monotonic() + 60
    while _in_use(Path(held)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with new_folder(tmp_path / "next"):
        pass
    assert not os.path.exists(held)


def test_a_second_fit_into_the_same_folder_is_refused_at_its_start(tmp_path):
    """Review: two `zsfs fit --out X` at once: the second ran its whole fit, then said X exists.
    The first now holds X's temporary folder from the start of its fit."""
    store = make_synthetic_store(tmp_path / "s.h5", 600, 3, seed=0, clip_dim=16, backbone_dim=16)
    fit = ["fit", "--store", str(store), "--out", str(tmp_path / "run"), "--k", "2", "--cycle-epochs", "1"]
    with started(["-c", RUN_CLI, *fit]) as first:
        read_until(first, "fit: ")  # its fit has begun (a log's phase line)
        os.kill(first.pid, signal.SIGSTOP)  # held mid-fit, whatever this machine's speed
        try:
            second = run_cli(*fit)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        said = first.communicate(timeout=300)[0]
    assert second.exit_code == 1 and f"another zsfs process (pid {first.pid}) is writing {tmp_path / 'run'} now" \
        in " ".join(second.output.split()), second.output
    assert first.returncode == 0 and (tmp_path / "run" / "predictions.parquet").is_file(), said


def test_a_name_with_a_newline_is_tracked_as_any_other(tmp_path):
    """Review: the temporary-name pattern stopped at a newline: a kill -9'd writer of "a\\nb" left
    its folder for ever, and a second writer of such a name was refused only after its whole work;
    a folder of the user's named like a temporary one plus a final newline counted as one."""
    from zsfs.outputs import _alive, _host, check_new_folder

    killed, killed_tmp = _hold_a_new_folder(tmp_path / "a\nb")
    live, live_tmp = _hold_a_new_folder(tmp_path / "c\nd")
    dead = next(candidate for candidate in range(4000, 30000) if not _alive(candidate))
    users = tmp_path / f".e.{dead}-{_host()}.abcd1234.tmp\n"
    users.mkdir()
    try:
        with pytest.raises(FolderExistsError, match=f"another zsfs process \\(pid {live.pid}\\) is writing"):
            check_new_folder(tmp_path / "c\nd")
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        with new_folder(tmp_path / "next"):
            pass
        assert not os.path.exists(killed_tmp) and os.path.isdir(live_tmp) and users.is_dir()
    finally:
        live.kill()
        live.wait()
        killed.stdout.close()
        live.stdout.close()


def test_a_writer_of_a_long_name_is_seen_through_its_cut_temporary_name(tmp_path):
    """Review: only a short name's writer was tested; a long one's temporary folder holds the name
    cut (255 bytes in all), and a second `fit --out` of that name ran its whole fit before failing."""
    from zsfs.outputs import FolderExistsError, check_new_folder

    long_name = tmp_path / ("r" * 250)
    holder, held = _hold_a_new_folder(long_name)
    try:
        assert len(os.path.basename(held)) == 255 and "r" * 250 not in held  # the name is cut
        with pytest.raises(FolderExistsError, match=f"another zsfs process \\(pid {holder.pid}\\) is writing"):
            check_new_folder(long_name)
        check_new_folder(tmp_path / ("s" * 250))  # another long name: free
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_file_write_removes_the_temporary_file_a_killed_writer_left(tmp_path):
    """Review: only new_folder's clean-up was tested; a predict or report killed while replacing
    its file leaves a hidden copy (a whole predictions file) that the next write must remove."""
    from zsfs.outputs import _alive, _host, write_text_atomically

    dead = next(candidate for candidate in range(4000, 30000) if not _alive(candidate))
    killed = tmp_path / f".p.csv.{dead}-{_host()}.abcd1234.tmp"
    live = tmp_path / f".p.csv.{os.getppid()}-{_host()}.abcd1234.tmp"
    for left in (killed, live):
        left.write_text("half")
    write_text_atomically(tmp_path / "p.csv", "x")
    assert (tmp_path / "p.csv").read_text() == "x"
    assert not killed.exists() and live.read_text() == "half"


def test_a_fifo_named_like_a_stale_temporary_folder_does_not_hang_the_next_writer(tmp_path):
    """Review: the in-use check opened every stale-looking entry to try its lock; a FIFO under such
    a name blocked that open, and with it every fit, report or predict writing into the folder."""
    from zsfs.outputs import _alive, _host

    pid = next(candidate for candidate in range(4000, 30000) if not _alive(candidate))
    fifo = tmp_path / f".run.{pid}-{_host()}.abcd1234.tmp"
    os.mkfifo(fifo)
    script = f"from zsfs.outputs import new_folder\nwith new_folder({str(tmp_path / 'next')!r}): pass\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)  # bug: blocked for ever
    assert not fifo.exists() and (tmp_path / "next").is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_results_get_the_users_umask(tmp_path, umask):
    """Bug: run folders came out 0700 (mkdtemp) and written files 0644 whatever the umask."""
    from zsfs.outputs import write_text_atomically

    previous = os.umask(umask)
    try:
        with new_folder(tmp_path / "run") as folder:
            (folder / "a.txt").write_text("a")
        write_text_atomically(tmp_path / "page.html", "<p>")
    finally:
        os.umask(previous)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "page.html").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_run_written_into_a_group_folder_stays_the_groups(tmp_path):
    """Bug: a fit into a setgid group folder (umask 007, as a lab shares its results) made a run
    folder without the setgid bit (the chmod of its temporary folder dropped it), so its files took
    the user's own group: the rest of the group could not open the run."""
    store = make_synthetic_store(tmp_path / "s.h5", 120, 2, seed=0, clip_dim=16, backbone_dim=16)
    shared = tmp_path / "lab"
    shared.mkdir()
    # the group: any but this user's own where that is possible (root may give any)
    group = 4321 if os.geteuid() == 0 else next((gid for gid in os.getgroups() if gid != os.getegid()), os.getegid())
    os.chown(shared, -1, group)
    os.chmod(shared, 0o2770)
    done = run_zsfs("fit", "--store", store, "--k", "2", "--candidates", "10", "--epochs", "5", "--cycle-epochs", "2",
                    "--out", shared / "run", "--report", launcher=("bash", "-c", 'umask 007; exec "$@"', "bash"))
    assert done.returncode == 0, done.output
    run = shared / "run"
    assert run.stat().st_mode & 0o7777 == 0o2770
    assert {path.name: path.stat().st_gid for path in [run, *run.iterdir()]} == \
        {path.name: group for path in [run, *run.iterdir()]}


def test_result_files_reach_the_disk_before_their_rename_publishes_them(tmp_path, monkeypatch):
    """Bug: run folders, reports and predictions files were renamed into place unsynced (the store
    was synced): after a power loss a complete-looking run could hold empty files. Every fsync
    is recorded by the path of its file descriptor (Linux: /proc/self/fd)."""
    from zsfs.outputs import write_text_atomically

    synced, renamed, fsync, rename, replace = [], [], os.fsync, os.rename, os.replace

    def recording_fsync(handle):
        synced.append(os.readlink(f"/proc/self/fd/{handle}"))
        return fsync(handle)

    def recording(move):
        def moved(source, target):
            renamed.append((str(source), len(synced)))
            return move(source, target)
        return moved

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording(rename))
    monkeypatch.setattr(os, "replace", recording(replace))
    with new_folder(tmp_path / "run") as folder:
        (folder / "sub").mkdir()
        (folder / "a.txt").write_text("a")
        (folder / "sub" / "b.txt").write_text("b")
        (folder / "outer" / "inner").mkdir(parents=True)  # a folder holding only a folder: its entry too
        (folder / "outer" / "inner" / "c.txt").write_text("c")
    [(tmp_folder, synced_before)] = renamed
    assert {f"{tmp_folder}/a.txt", f"{tmp_folder}/sub/b.txt", f"{tmp_folder}/sub", tmp_folder, f"{tmp_folder}/outer",
            f"{tmp_folder}/outer/inner", f"{tmp_folder}/outer/inner/c.txt"} <= set(synced[:synced_before])
    assert synced[synced_before:] == [str(tmp_path)]  # then the rename itself

    synced.clear(), renamed.clear()
    write_text_atomically(tmp_path / "page.html", "<p>")
    [(tmp_file, synced_before)] = renamed
    assert synced == [tmp_file, str(tmp_path)] and synced_before == 1 and (tmp_path / "page.html").read_text() == "<p>"


def test_a_default_run_folder_taken_meanwhile_gets_the_next_name(run_dir, tmp_path):
    """Bug: two fits started in the same second chose the same default folder; the second failed
    after all its work, asking for an --out the user never gave."""
    from zsfs.cli.fit import _save_under_a_new_name

    taken = tmp_path / "runs" / "s-synthetic-k16-20261201-065000"
    taken.mkdir(parents=True)
    (taken / "config.json").write_text("{}")
    names = iter([taken, taken.with_name(taken.name + "-2")])
    saved = _save_under_a_new_name(runs.load_run(run_dir), lambda: next(names))
    assert saved == taken.with_name(taken.name + "-2") and (saved / runs.PREDICTIONS).is_file()
    assert sorted(p.name for p in taken.iterdir()) == ["config.json"]  # the other run's folder untouched


def test_fit_metrics_hand_computed():
    # images: dog, cat, yak (no class: OOD), dog, emu; classes cat, dog, emu, fox (fox reported absent)
    labels = np.array(["dog", "cat", "yak", "dog", "emu"], dtype=object)
    result = SimpleNamespace(
        classes=["cat", "dog", "emu", "fox"],
        predicted=np.array([1, 1, 0, 0, 2]),
        zero_shot_predicted=np.array([1, 0, 1, 1, 1]),
        cycles=[SimpleNamespace(index=0, n_kept=2, rows=np.array([0, 1]), labels=np.array([1, 0])),
                SimpleNamespace(index=1, n_kept=0, rows=np.array([], int), labels=np.array([], int)),
                SimpleNamespace(index=2, n_kept=1, rows=np.array([4]), labels=np.array([2]))],
        absent_classes=["fox", "emu"],
        ood_score=np.array([0.1, 0.2, 0.9, 0.3, 0.4]),
        ood_paper=np.array([0.0, 0.0, 1.0, 0.0, 0.0]),
        ood_continuous=np.array([0.0, 0.0, 1.0, 0.0, 0.5]),
        mcm_score=np.array([0.5, 0.1, 0.2, 0.3, 0.4]),
    )
    metrics = fit_metrics(result, labels)
    assert metrics["n_images"] == 5 and metrics["n_evaluated"] == 4
    assert metrics["accuracy"] == pytest.approx(2 / 4)  # dog, cat, dog, emu -> dog, dog, cat, emu
    assert metrics["zero_shot_accuracy"] == pytest.approx(3 / 4)
    assert metrics["per_class_accuracy"] == {"cat": 0.0, "dog": 0.5, "emu": 1.0, "fox": None}
    # one kept image has a precision; the pseudo-labels' own, not the head's on them (review: predicted gives 0.5)
    assert [c["precision"] for c in metrics["seed_precision"]] == [1.0, None, 1.0]
    assert metrics["absent_classes"] == {"reported": ["fox", "emu"], "truly_absent": ["fox"], "precision": 0.5}
    assert metrics["ood_auroc"] == 1.0 and metrics["mcm_auroc"] == 0.25
    assert metrics["ood_paper_auroc"] == 1.0 and metrics["ood_continuous_auroc"] == 1.0
    assert metrics["labels_not_classes"] == {"yak": 1}
    # labels that name no class (a vocabulary spelt otherwise): nothing measurable, not precision 0
    other = fit_metrics(result, np.array(["Dog", "Cat", "yak", "Dog", "Emu"], dtype=object))
    assert other == {"n_images": 5, "n_evaluated": 0, "labels_not_classes": {"Dog": 2, "Cat": 1, "Emu": 1, "yak": 1}}
    assert "labels_not_classes" not in fit_metrics(result, np.array(["dog", "cat", "emu", "dog", "emu"]))


def test_the_fit_summary_names_labels_that_are_no_class_and_their_near_spellings():
    """A class folder named 'bird ' (or in another Unicode form) silently counted as OOD."""
    import polars as pl

    def row(outside: dict, classes: list[str]) -> str:
        rows = dict(summary_rows({"classes": classes}, {"labels_not_classes": outside}, pl.DataFrame(), 8))
        return rows["labels that are no class (images counted as OOD)"]

    decomposed = "cafe\u0301"
    said = row({"bird ": 18, decomposed: 3, "yak": 1}, ["bird", "caf\u00e9", "dog"])
    assert said == (f"3: 'bird ' 18 (spelled like class 'bird'); {decomposed!r} 3 (spelled like class 'caf\u00e9'); "
                    "'yak' 1")
    assert "(spelled like class 'red fox')" in row({"Red  Fox": 2}, ["red fox"])  # spacing inside
    # walkthrough: a CSV written `path, "Ankle boot"` (a space after each comma) keeps the quotes
    assert row({'"Ankle boot"': 9}, ["Ankle boot"]) == """1: '"Ankle boot"' 9 (spelled like class 'Ankle boot')"""


def test_metrics_of_an_unlabelled_run_are_absent(tmp_path):
    store_path = make_synthetic_store(tmp_path / "s.h5", 120, 2, seed=1, labels=False, clip_dim=32, backbone_dim=64)
    config = FitConfig(k=2, candidates=10, cycle_epochs=1)
    with Store(store_path) as store:
        saved = FittedRun.from_fit(fit_store(store, config), store, config).save(tmp_path / "run").path
    run = runs.load_run(saved)
    assert run.metrics is None and not (saved / runs.METRICS).exists()
    assert "label" not in run.predictions.columns


def test_metrics_json_writes_an_undefined_figure_as_null(tmp_path):
    """metrics.json is valid JSON: an AUROC or precision that is NaN (no such images) is null."""
    from zsfs.outputs import write_json

    write_json(tmp_path / "m.json", {"ood_auroc": float("nan"), "values": np.array([1.0, np.inf]),
                                     "n": np.int64(3), "where": tmp_path})
    assert json.loads((tmp_path / "m.json").read_text()) == {"ood_auroc": None, "values": [1.0, None], "n": 3,
                                                            "where": str(tmp_path)}


def test_predictions_name_no_class_where_the_fit_gave_none(tmp_path):
    """Class codes of -1 (an image no seed or cycle labelled) are null in predictions.parquet, not
    the first class; the rows follow the store's paths and labels."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 4, 2, seed=0, clip_dim=8, backbone_dim=8)
    codes = np.array([1, -1, 0, -1])
    result = SimpleNamespace(classes=["cat", "dog"], predicted=np.array([1, 0, 0, 1]), pseudo_label=codes,
                             zero_shot_predicted=codes[::-1].copy(), **{name: np.zeros(4) for name in (
                                 "confidence", "ood_score", "ood_flag", "ood_distance", "ood_paper", "ood_continuous",
                                 "is_seed", "pseudo_cycle", "zero_shot_confidence", "mcm_score")})
    with Store(store_path) as store:
        frame = runs.run_predictions(result, store, store.labels())
        assert frame["path"].to_list() == store.paths().tolist() and frame["label"].to_list() == store.labels().tolist()
    assert frame["predicted"].to_list() == ["dog", "cat", "cat", "dog"]
    assert frame["pseudo_label"].to_list() == ["dog", None, "cat", None]
    assert frame["zero_shot_predicted"].to_list() == [None, "cat", None, "dog"]


def test_the_default_run_folder_is_named_after_store_vocabulary_k_and_time(tmp_path, monkeypatch):
    """As --help says: runs/<store>-<vocab>-k<k>-<UTC time>, with a counter where that exists."""
    from datetime import datetime, timezone
    from pathlib import Path

    import zsfs.cli.fit
    from zsfs.cli.fit import default_run_dir

    class FixedClock(datetime):
        @classmethod
        def now(cls, tz=None):
            assert tz is timezone.utc  # the folder's time is UTC, whatever the machine's zone
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(zsfs.cli.fit, "datetime", FixedClock)
    monkeypatch.chdir(tmp_path)
    for expected in ("photos-pets-k8-20260102-030405", "photos-pets-k8-20260102-030405-2",
                     "photos-pets-k8-20260102-030405-3"):
        made = default_run_dir(Path("stores/photos.h5"), "pets", 8)
        assert made == Path("runs") / expected
        made.mkdir(parents=True)
    # bug (new-user review): a 3,000-character vocabulary name made a folder name the file system refused
    long = default_run_dir(Path("stores/photos.h5"), "\u00e9" * 3000, 8)
    assert long.name == "photos-" + "\u00e9" * 45 + "-k8-20260102-030405" and len(os.fsencode(long.name)) <= 200
    long.mkdir()
    # walkthrough: fits started together took one name; the later ones failed with "another zsfs process
    # (pid ...) is writing runs/...": a name another process is filling is taken too
    writing = subprocess.Popen([sys.executable, "-c", "import sys, time; from zsfs.outputs import new_folder\n"
                                "with new_folder(sys.argv[1]):\n    print('filling', flush=True); time.sleep(60)",
                                str(tmp_path / "runs" / "photos-pets-k8-20260102-030405-4")],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert writing.stdout.readline().strip() == "filling"
        assert default_run_dir(Path("stores/photos.h5"), "pets", 8).name == "photos-pets-k8-20260102-030405-5"
    finally:
        writing.kill()
        writing.wait()
    # review: a writer whose cut temporary name matched every counter made the search spin for ever
    monkeypatch.setattr(zsfs.cli.fit, "MAX_RUN_COUNTER", 5)
    for n in (4, 5):
        (tmp_path / "runs" / f"photos-pets-k8-20260102-030405-{n}").mkdir()
    with pytest.raises(ZsfsError, match=r"030405 to runs/photos-pets-k8-20260102-030405-5 are all taken or being written; choose a folder with --out RUN_DIR"):
        default_run_dir(Path("stores/photos.h5"), "pets", 8)


# `zsfs fit` in a child process, its run folder's config.json written only after a file
# ($1) marks that the rest of the run is in its temporary folder, and never (so a signal lands there).
SLOW_SAVE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import zsfs.runs
    from zsfs.cli import main
    marker, write_json = Path(sys.argv.pop(1)), zsfs.runs.write_json
    def slow_write_json(path, data):
        marker.touch()
        time.sleep(600)
        write_json(path, data)
    zsfs.runs.write_json = slow_write_json
    sys.argv[0] = "zsfs"
    main()
""")


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["training", "saving"])
def test_a_signal_stops_a_fit_cleanly_and_leaves_no_run_folder(tmp_path, number, when):
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (`timeout`, Slurm) during a fit's
    training or while its run folder is written: one line, exit 130 / 143, no traceback, neither the
    run folder nor its temporary sibling left, and the same command then runs to the end."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 2000, 10, n_ood_classes=3, seed=0)
    run_dir, marker = tmp_path / "runs" / "k16", tmp_path / "saving"
    # training: --paper --epochs 2000, a self-training phase of minutes, so the signal lands inside it
    args = ["fit", "--store", str(store_path), "--out", str(run_dir),
            *(["--paper", "--epochs", "2000"] if when == "training" else ["--k", "4", "--cycle-epochs", "2"])]
    script = ["-c", SLOW_SAVE, str(marker)] if when == "saving" else ["-c", RUN_CLI]
    heard = []
    with started([*script, *args]) as process:
        if when == "training":  # a log's lines (not a terminal): one per phase as it starts
            heard = " ".join(read_until(process, "fit: self-training")).split()
        else:
            wait_for(marker, process)  # config.json is next
            assert [path.name for path in run_dir.parent.iterdir() if path.name.startswith(".k16.")]  # being written
        said = " ".join([*heard, stop(process, number)])
    assert process.returncode == 128 + number and "Traceback" not in said, said
    assert said.endswith(f"{STOPPED_BY[number]} Nothing half-written was left."), said
    left = sorted(path.name for path in run_dir.parent.iterdir()) if run_dir.parent.exists() else []
    assert left == []  # no run folder, no temporary one

    result = run_cli("fit", "--store", store_path, "--out", run_dir, "--k", "4", "--cycle-epochs", "2")
    assert result.exit_code == 0 and (run_dir / "config.json").is_file(), result.output


# `zsfs fit` in a child process whose run folder, once renamed into place, waits in the sync of its
# parent folder after a file ($1) marks it (so a signal lands between the rename and the end of the write).
SLOW_PUBLISH = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import zsfs.outputs
    marker, sync = Path(sys.argv.pop(1)), zsfs.outputs.fsync_folder
    def slow_sync(folder):
        if any(name.endswith("k4") for name in os.listdir(folder)):  # the run is in place
            marker.touch()
            time.sleep(600)
        sync(folder)
    zsfs.outputs.fsync_folder = slow_sync
    sys.argv[0] = "zsfs"
    from zsfs.cli import run
    run()
""")


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_once_the_run_folder_is_in_place_says_it_was_saved(tmp_path, number):
    """Bug: Ctrl-C or SIGTERM after the run folder was renamed into place, while its folder's
    rename was synced, said "Nothing half-written was left." beside a complete run, and the same
    command then refused its folder as taken. Now the line says the run was written."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 300, 4, seed=0)
    run_dir, marker = tmp_path / "runs" / "k4", tmp_path / "published"
    args = ["fit", "--store", str(store_path), "--out", str(run_dir), "--k", "4", "--cycle-epochs", "2"]
    with started(["-c", SLOW_PUBLISH, str(marker), *args]) as process:
        wait_for(marker, process)
        said = stop(process, number)
    assert process.returncode == 128 + number and "Traceback" not in said, said
    assert (run_dir / "config.json").is_file() and (run_dir / "predictions.parquet").is_file()
    assert "Nothing half-written" not in said and said.endswith(
        f"{STOPPED_BY[number]} {run_dir} was written in full before that."), said
    assert sorted(path.name for path in run_dir.parent.iterdir()) == ["k4"]  # no temporary folder left


def test_the_summary_says_none_absent_only_where_absent_classes_were_looked_for():
    """The paper's cycles and --keep-all-classes never look for absent classes: 'absent classes:
    none' there read as a finding (the report said it of every run)."""
    import polars as pl

    def absent(method: str, keep: bool, found: list[str]) -> str | None:
        config = {"classes": ["a", "b"], "absent_classes": found,
                  "parameters": {"method": method, "keep_all_classes": keep}}
        return dict(summary_rows(config, None, pl.DataFrame(), 8)).get("absent classes")

    assert absent("balanced", False, []) == "none" and absent("balanced", False, ["b"]) == "1: b"
    assert absent("cycles", False, []) is None and absent("balanced", True, []) is None


def test_a_killed_runs_folder_its_owner_made_unreadable_is_removed_all_the_same(tmp_path):
    """Review: a leftover temporary folder that its owner could no longer read (a chmod since, of it
    or of a folder inside) was never removed: each writer into that folder skipped it as "in use"."""
    from zsfs.outputs import _alive, _host
    from zsfs.testing.privileges import run_python_unprivileged

    pid = next(candidate for candidate in range(4000, 30000) if not _alive(candidate))
    left = tmp_path / f".run.{pid}-{_host()}.abcd1234.tmp"
    (left / "inner").mkdir(parents=True)
    (left / "inner" / "half-written").write_text("x")
    (left / "inner").chmod(0)
    left.chmod(0o100)  # search only: not readable, not writable
    script = f"from zsfs.outputs import new_folder\nwith new_folder({str(tmp_path / 'next')!r}): pass\n"
    child = run_python_unprivileged(script)  # as any user: root would read through the modes
    assert child.returncode == 0, child.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["next"]


def test_the_cycles_table_shows_a_diverging_loss_whole():
    """Review: `--lr 1e30` gave a first loss of 3.9e+29, shown in 4 decimals (34 digits) and cut by the table."""
    config = {"cycles": [{"cycle": 0, "n_candidates": 10, "n_kept": 8, "n_trained": 8, "epochs": 5,
                          "first_loss": 3.8633625e29},
                         {"cycle": 1, "n_candidates": 10, "n_kept": 9, "n_trained": 9, "epochs": 5, "first_loss": 0.69315}]}
    header, rows = cycle_rows(config, None)
    assert header[-1] == "first loss" and [row[-1] for row in rows] == ["3.863e+29", "0.6932"]


def test_the_summary_says_why_a_labelled_run_has_no_accuracy_and_lists_exactly_as_many_names_as_fit():
    """Review (mutation): a run whose labels name no class has metrics.json without "accuracy": the
    summary says why (not nothing); a list of exactly the names shown gets no "... (0 more)"."""
    import polars as pl

    metrics = {"n_images": 5, "n_evaluated": 0, "labels_not_classes": {"Dog": 5}}
    rows = dict(summary_rows({"classes": ["dog"]}, metrics, pl.DataFrame(), 8))
    assert rows["accuracy"] == "- (no image's label is a class of this vocabulary)"
    assert "accuracy" not in dict(summary_rows({"classes": ["dog"]}, None, pl.DataFrame(), 8))  # no labels
    config = {"classes": list("abcdefgh"), "absent_classes": list("abcdefgh"), "parameters": {"method": "balanced"}}
    assert dict(summary_rows(config, None, pl.DataFrame(), 8))["absent classes"] == "8: a; b; c; d; e; f; g; h"
    assert dict(summary_rows(config, None, pl.DataFrame(), 7))["absent classes"] == \
        "8: a; b; c; d; e; f; g; ... (1 more in config.json)"


def test_a_run_file_is_refused_as_an_output_in_any_case(run_dir, tmp_path):
    """Review (mutation): on a case-insensitive file system (macOS, Windows) CONFIG.JSON is the run's config.json."""
    for name in ("config.json", "CONFIG.JSON", "Predictions.Parquet", "metrics.JSON", "classifier.PT"):
        with pytest.raises(ZsfsError, match="is a file of the fit run in"):
            runs.refuse_run_file(run_dir / name)
    runs.refuse_run_file(run_dir / "new.parquet")  # another name there
    runs.refuse_run_file(tmp_path / "config.json")  # no run here


def test_a_default_run_folder_name_fits_in_200_bytes_whatever_the_names(tmp_path, monkeypatch):
    """Review (mutation): each name is cut to whole characters within its share of the 200 bytes."""
    from zsfs.cli.fit import default_run_dir

    monkeypatch.chdir(tmp_path)
    for store, vocabulary in ((f"a{'é' * 300}.h5", "a" + "é" * 3000), ("é" * 300 + ".h5", "é" * 3000)):
        name = default_run_dir(Path("stores") / store, vocabulary, 8).name
        assert 190 <= len(os.fsencode(name)) <= 200 and name.isprintable(), (len(os.fsencode(name)), name)


def test_a_run_pairs_a_fit_with_its_own_store_and_configuration(tmp_path):
    """Walkthrough: FittedRun.from_fit saved a fit of one store with another store's paths and
    labels (metrics against them too), and whatever config it was given (k 7 for a fit at k 2)."""
    options = dict(clip_dim=32, backbone_dim=64)
    first = make_synthetic_store(tmp_path / "a.h5", 150, 3, seed=1, **options)
    other = make_synthetic_store(tmp_path / "b.h5", 150, 3, seed=3, **options)
    config = FitConfig(k=2, candidates=10, cycle_epochs=1)
    with Store(first) as store, Store(other) as wrong:
        result = fit_store(store, config)
        config.k = 7  # changed after the fit: the result keeps what it ran with
        with pytest.raises(ParameterError, match=r"store \(.*b\.h5\) is not the store this fit read"):
            FittedRun.from_fit(result, wrong)
        with pytest.raises(ParameterError, match=r"config is not the configuration this fit ran with: k 7 \(the "
                                                 r"fit's: 2\); leave it out"):
            FittedRun.from_fit(result, store, config)
        with pytest.raises(ParameterError, match=r"result must be the FitResult of zsfs\.fit\.fit_store"):
            FittedRun.from_fit(FittedRun.from_fit(result, store), store)
        saved = FittedRun.from_fit(result, store).save(tmp_path / "run").path
    assert runs.load_run(saved).config["parameters"]["k"] == 2


def test_a_run_being_saved_is_named_so_to_report_and_predict(tmp_path):
    """Review: `zsfs report RUN` and `zsfs predict --run RUN` while a fit was saving RUN said
    "RUN does not exist; pass a run folder written by zsfs fit", where a second fit names the writer."""
    holder, _ = _hold_a_new_folder(tmp_path / "run")
    try:
        for command in (("report", tmp_path / "run"), ("predict", "--run", tmp_path / "run", tmp_path)):
            result = run_cli(*command)
            assert result.exit_code == 1 and f"{tmp_path / 'run'} is not finished: another zsfs process (pid " \
                f"{holder.pid}) is writing it now; rerun this once it is done" in output_text(result), result.output
        with pytest.raises(ZsfsError, match=f"is not finished: another zsfs process \\(pid {holder.pid}\\)"):
            load_run(tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with pytest.raises(ZsfsError, match="run does not exist; pass a run folder"):  # once that writer is gone
        load_run(tmp_path / "run")
