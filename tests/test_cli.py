"""What every command shares: user strings are printed as written (never read as rich markup),
errors and Ctrl-C are one clear line, and bad options fail before any work is done."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from zsfs.testing.cli import run_cli

BRACKETED = "no[/x]such[draft].h5"  # '[/x]' is a rich closing tag, '[draft]' an opening one


def test_an_error_with_brackets_is_printed_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("info", BRACKETED)
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert BRACKETED in result.output
    assert "Traceback" not in result.output


def test_the_store_typed_in_the_other_form_gets_a_hint_naming_this_commands_form():
    for command in ("fit", "ood-bench"):
        result = run_cli(command, "photos.h5")
        assert result.exit_code == 2
        assert f"The store is an option here: zsfs {command} --store STORE" in result.output
    for command in ("info", "neighbours", "text"):
        result = run_cli(command, "--store", "photos.h5")
        assert result.exit_code == 2
        assert f"without --store: zsfs {command} STORE" in result.output and "Did you mean" not in result.output
    other = run_cli("info", "--stor", "photos.h5").output  # other usage errors are click's own
    assert "No such option" in other and "The store is" not in other
    # the same for a run folder (predict --run, report RUN_DIR) and a new store (extract --out, import OUT)
    said = " ".join(run_cli("predict", "runs/x", "new.jpg").output.split())
    assert "The run folder is an option here: zsfs predict --run RUN_DIR" in said, said
    said = " ".join(run_cli("report", "--run", "runs/x").output.split())  # bug: "Did you mean '--out'?"
    assert "without --run: zsfs report RUN_DIR" in said and "Did you mean" not in said, said
    said = " ".join(run_cli("import", "--out", "s.h5", "--clip-embeddings", "c.npy").output.split())
    assert "The store to write is an argument here, without --out: zsfs import OUT" in said, said


def test_a_source_that_ray_took_as_its_address_or_many_sources_are_named(tmp_path, monkeypatch):
    """Bugs: `zsfs extract --ray photos` said "Missing argument 'SOURCE'": --ray's optional value
    took the folder; `zsfs extract photos/*.jpg` said only "unexpected extra arguments"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    said = " ".join(run_cli("extract", "--ray", "photos").output.split())
    assert "Missing argument 'SOURCE'" in said and "--ray took 'photos' as its cluster address: put SOURCE first " \
        "(zsfs extract SOURCE --ray ...) or give the address as --ray=ADDRESS" in said, said
    said = " ".join(run_cli("extract", "--ray", "laion/{00000..00009}.tar").output.split())  # no such path: a pattern
    assert "--ray took 'laion/{00000..00009}.tar' as its cluster address" in said, said
    for address in ("head:6379", "ray://head:10001"):  # addresses: click's message alone
        said = " ".join(run_cli("extract", "--ray", address).output.split())
        assert "Missing argument 'SOURCE'" in said and "--ray took" not in said, said
    said = " ".join(run_cli("extract", "a.jpg", "b.jpg").output.split())  # photos/*.jpg, as predict takes them
    assert "Got unexpected extra argument (b.jpg). zsfs extract takes one SOURCE (a shell pattern such as photos/*.jpg " \
        "gives many): a folder, a list file or tar shards" in said, said
    # walkthrough: an unquoted pattern of tars got the advice for images
    (tmp_path / "shards").mkdir()
    tars = [tmp_path / "shards" / f"00{i}.tar" for i in range(3)]
    for tar in tars:
        tar.write_bytes(b"")
    said = " ".join(run_cli("extract", *tars).output.split())
    assert f"zsfs extract takes one SOURCE: quote a pattern of tar shards for zsfs to expand, '{tmp_path}/shards/" \
        f"{{000..LAST}}.tar', or pass their folder, {tmp_path}/shards" in said and "photos/*.jpg" not in said, said
    monkeypatch.chdir(tmp_path / "shards")  # review: "or pass their folder, ." ended the hint
    said = " ".join(run_cli("extract", *(tar.name for tar in tars)).output.split())
    assert "'{000..LAST}.tar', or pass their folder, '.' (the current one)" in said, said
    said = " ".join(run_cli("extract", tars[0], "out.h5").output.split())  # --out forgotten: no tar advice (review)
    assert "quote a pattern" not in said and "zsfs extract takes one SOURCE (a shell pattern" in said, said


def test_sigterm_is_handled_only_while_a_command_runs(monkeypatch, tmp_path):
    """Bug: the command line's SIGTERM handler stayed in a program that called it in-process, and
    every process it forked later raised zsfs' exception on `terminate()` instead of ending."""
    import signal

    seen = []
    # a program's own process, which no earlier test's in-process ray.init gave Ray's handler
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr("zsfs.store.Store", lambda *args: seen.append(signal.getsignal(signal.SIGTERM)) or 1 / 0)
    try:
        run_cli("info", tmp_path / "s.h5")
    except ZeroDivisionError:  # a bug's traceback: the handler goes too
        pass
    finally:
        after = signal.signal(signal.SIGTERM, previous)
    assert seen and seen[0] != signal.SIG_DFL  # while it ran: handled
    assert after == signal.SIG_DFL  # after: as it was
    # review (mutation: the host's check dropped passed): a host's own handler (pipelines.run has one)
    # stays in place during the command and after it, or its next SIGTERM would kill it silently
    host = lambda number, frame: None  # noqa: E731
    seen.clear()
    previous = signal.signal(signal.SIGTERM, host)
    try:
        with pytest.raises(ZeroDivisionError):
            run_cli("info", tmp_path / "s.h5")
    finally:
        after = signal.signal(signal.SIGTERM, previous)
    assert seen == [host] and after is host


def test_a_write_failure_after_a_result_is_saved_says_it_was_saved():
    """Review (mutation: only a full disk was read so passed): EIO, EPIPE or NFS' EACCES after the
    result is whole on disk must say so too, not send the user to a rerun that refuses it."""
    import errno

    from zsfs.cli.group import kept_if_interrupted
    from zsfs.errors import ZsfsError

    with pytest.raises(ZsfsError, match=r"Input/output error.* KEPT\.$"), kept_if_interrupted("KEPT"):
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(ValueError), kept_if_interrupted("KEPT"):  # a bug keeps its traceback
        raise ValueError("bug")


def test_ctrl_c_message_does_not_promise_a_resume_for_every_command(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("zsfs.store.Store", interrupted)
    result = run_cli("info", "s.h5")
    assert result.exit_code == 130
    assert "Interrupted." in result.output and "resume" not in result.output  # it spoke of extract and import
    monkeypatch.setattr("zsfs.importer.import_store", interrupted)
    monkeypatch.chdir(tmp_path)
    for name in ("c.npy", "b.npy"):
        (tmp_path / name).write_bytes(b"")
    result = run_cli("import", "s.h5", "--clip-embeddings", "c.npy", "--backbone-features", "b.npy")
    assert result.exit_code == 130 and "a rerun resumes where this one stopped" in result.output
    result = run_cli("import", "s.h5", "--clip-embeddings", "c.npy", "--backbone-features", "b.npy", "--overwrite")
    assert result.exit_code == 130 and "a rerun without --overwrite resumes from the shards this run finished (with " \
        "it, the store is built again from the start: --overwrite removes the earlier store before it writes)." \
        in " ".join(result.output.split())  # bug: it said "a rerun"


def test_a_failure_that_asks_for_a_rerun_under_overwrite_says_to_drop_it():
    """Bug: "Rerun: an extract resumes ..." (a decoding process killed) got no note: "rerun" was
    looked for in lower case only; under --overwrite every rerun started over."""
    import click

    from zsfs.cli.group import OVERWRITING, _resuming_hint

    context = click.Context(click.Command("extract"))
    context.meta[OVERWRITING] = True
    for message in ("free some space and rerun the same command.", "Rerun: an extract resumes from the shards"):
        assert _resuming_hint(context, message).startswith(" Note: a rerun without --overwrite resumes"), message
    assert _resuming_hint(context, "unknown CLIP model 'x'") == ""
    context.meta[OVERWRITING] = False
    assert _resuming_hint(context, "free some space and rerun") == ""


def test_what_a_failed_extract_keeps_is_its_own_sentence():
    """Ray review: "...see the workers' logs in /tmp/ray/... No shard was finished" ran two sentences together."""
    import click

    from zsfs.cli.group import OVERWRITING, _kept_for_a_rerun
    from zsfs.errors import ZsfsError

    context = click.Context(click.Command("extract"))
    failed = ZsfsError("3 Ray workers died (see their logs)")
    failed.resume = "no shard was finished (each holds 6 files: --shard-size 6): a rerun embeds the 9 files"
    assert _kept_for_a_rerun(context, failed, str(failed)) == ". No shard was finished (each holds 6 files: " \
        "--shard-size 6): a rerun embeds the 9 files."
    assert _kept_for_a_rerun(context, failed, "free some space and rerun.").startswith(" No shard")
    context.meta[OVERWRITING] = True  # the note under --overwrite says what a rerun does
    assert _kept_for_a_rerun(context, failed, str(failed)) == ""


def test_ctrl_c_after_a_fit_is_saved_says_the_run_is_kept(monkeypatch, tmp_path):
    """Bug: Ctrl-C while `fit --report` rendered the page said "Nothing half-written was left",
    and the rerun it invited refused the run's folder, which held the whole run."""
    import zsfs.report
    from zsfs.runs import load_run
    from zsfs.testing.synthetic import make_synthetic_store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    store = make_synthetic_store(tmp_path / "s.h5", 200, 3, seed=0, clip_dim=32, backbone_dim=64)
    monkeypatch.setattr(zsfs.report, "write_report", interrupted)
    result = run_cli("fit", "--store", store, "--k", "3", "--candidates", "10", "--out", tmp_path / "run", "--report")
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())
    assert said.endswith(f"Interrupted. The run was saved in full in {tmp_path / 'run'} before that; write its report "
                         f"with `zsfs report {tmp_path / 'run'}`."), said
    assert "Nothing half-written" not in said
    assert load_run(tmp_path / "run").read_predictions(["predicted"]).height == 200


def test_a_full_stdout_after_a_fit_is_saved_says_the_run_is_kept_not_rerun(tmp_path):
    """Bug: `fit --json > /dev/full` (and ood-bench's) said "the disk is full: free some space and
    rerun", and the rerun refused the run's folder, which held the whole run."""
    from zsfs.runs import load_run
    from zsfs.testing.failures import run_zsfs
    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 200, 3, seed=0, clip_dim=32, backbone_dim=64)
    to_full_disk = ("sh", "-c", 'exec "$@" > /dev/full', "sh")  # stdout on a device whose writes fail: ENOSPC
    result = run_zsfs("fit", "--store", store, "--k", "3", "--candidates", "10", "--out", tmp_path / "run", "--json",
                      launcher=to_full_disk)
    assert result.returncode == 1, result.output
    said = " ".join(result.output.split())
    assert f"The run was saved in full in {tmp_path / 'run'} before that." in said and "rerun" not in said, said
    assert load_run(tmp_path / "run").read_predictions(["predicted"]).height == 200
    labelled = make_synthetic_store(tmp_path / "l.h5", 300, 4, seed=0, clip_dim=64, backbone_dim=64)
    result = run_zsfs("ood-bench", "--store", labelled, "--id-classes", "2", "--splits", "1", "--k", "3",
                      "--candidates", "10", "--out", tmp_path / "bench", "--json", launcher=to_full_disk)
    said = " ".join(result.output.split())
    assert result.returncode == 1 and f"The metrics were saved in full in {tmp_path / 'bench' / 'metrics.json'} " \
        "before that." in said and "rerun" not in said, said


def test_a_messages_file_the_disk_refuses_costs_the_messages_not_the_result(tmp_path):
    """Bug: with stderr on a full disk (`2>job.log` over quota, /dev/full) the first message's failed
    write stopped the command, exit 1: a fit wrote no run, `info --json` gave no data."""
    from zsfs.runs import load_run
    from zsfs.testing.failures import run_zsfs
    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 200, 3, seed=0, clip_dim=32, backbone_dim=64)
    messages_to_full_disk = ("sh", "-c", 'exec "$@" 2>/dev/full', "sh")  # ENOSPC on every write to stderr
    result = run_zsfs("fit", "--store", store, "--k", "3", "--candidates", "10", "--out", tmp_path / "run",
                      launcher=messages_to_full_disk)
    assert result.returncode == 0 and result.output == "", result.output
    assert load_run(tmp_path / "run").read_predictions(["predicted"]).height == 200
    result = run_zsfs("info", "--json", store, launcher=messages_to_full_disk)
    assert result.returncode == 0 and json.loads(result.output)["n_images"] == 200, result.output


def _new_image_predictions() -> pl.DataFrame:
    return pl.DataFrame({
        "path": ["[draft]/a.jpg", "[/x]/b.jpg"],
        "predicted": ["[cat]", None],
        "confidence": [0.9, None],
        "ood_distance": [0.0, None],
        "ood_distance_flag": [False, None],
        "ood_paper": [0.0, None],
        "ood_continuous": [-1.0, None],
        "error": [None, "bad [b]x[/b]"],
    }, schema={"path": pl.String, "predicted": pl.String, "confidence": pl.Float64, "ood_distance": pl.Float64,
               "ood_distance_flag": pl.Boolean, "ood_paper": pl.Float64, "ood_continuous": pl.Float64,
               "error": pl.String})


def test_predict_table_shows_paths_classes_and_errors_verbatim(tmp_path, monkeypatch):
    import zsfs.predict

    monkeypatch.setattr(zsfs.predict, "predict_images", lambda *args, **kwargs: _new_image_predictions())
    monkeypatch.chdir(tmp_path)
    result = run_cli("predict", "--run", "run", "photos")
    assert result.exit_code == 0, result.output
    for text in ("[draft]/a.jpg", "[/x]/b.jpg", "[cat]", "skipped: bad", "[b]x[/b]"):  # the error may wrap
        assert text in result.output


def test_predict_refuses_an_unknown_out_suffix_before_any_work(tmp_path, monkeypatch):
    import zsfs.predict

    def must_not_run(*args, **kwargs):
        raise AssertionError("predict_images ran before --out was checked")

    monkeypatch.setattr(zsfs.predict, "predict_images", must_not_run)
    result = run_cli("predict", "--run", tmp_path / "no-such-run", "--out", tmp_path / "p.xlsx", tmp_path)
    assert result.exit_code == 2
    assert "--out" in result.output
    assert ".csv" in result.output and ".parquet" in result.output and ".json" in result.output
    assert not (tmp_path / "p.xlsx").exists()


def test_extract_summary_shows_user_strings_verbatim_and_uses_the_common_progress(tmp_path, monkeypatch):
    import zsfs.cli.console
    import zsfs.cli.extract
    import zsfs.extract

    made = []

    def spy(description):
        progress = zsfs.cli.console.image_progress(description)
        made.append(progress)
        return progress

    def fake_extract(source, out, *, on_start, on_batch, **kwargs):
        on_start(3)
        on_batch(3)
        return zsfs.extract.ExtractSummary(
            output=Path("out[/x]put.h5"), n_images=3, n_skipped=1, skipped_reasons={"bad [/x] file": 1},
            shards_written=1, shards_reused=0, images_processed=4, seconds=1.0, embedding_seconds=1.0,
            vocabulary=None)

    assert not hasattr(zsfs.cli.extract, "_ItemsPerSecond")  # the common column, not a copy
    monkeypatch.setattr(zsfs.cli.extract, "image_progress", spy)
    monkeypatch.setattr(zsfs.extract, "extract", fake_extract)
    monkeypatch.chdir(tmp_path)
    result = run_cli("extract", "photos[draft]")
    assert result.exit_code == 0, result.output
    assert len(made) == 1
    for text in ("out[/x]put.h5", "bad [/x] file", "zsfs text out[/x]put.h5"):
        assert text in result.output


def test_extract_summary_shows_class_vocabulary_verbatim(tmp_path, monkeypatch):
    import zsfs.extract

    def fake_extract(source, out, *, on_start, on_batch, **kwargs):
        on_start(1)
        return zsfs.extract.ExtractSummary(
            output=Path("s.h5"), n_images=1, n_skipped=0, skipped_reasons={}, shards_written=1, shards_reused=0,
            images_processed=1, seconds=1.0, embedding_seconds=1.0, vocabulary="[v]", classes=["[a]"])

    monkeypatch.setattr(zsfs.extract, "extract", fake_extract)
    monkeypatch.chdir(tmp_path)
    result = run_cli("extract", "photos")
    assert result.exit_code == 0, result.output
    assert "[v] (1 class)" in result.output


def test_extract_summary_lists_every_skip_reason_and_the_files_set_aside(tmp_path, monkeypatch):
    import zsfs.extract
    from zsfs.cli.console import console
    from zsfs.crashes import CRASHING_FILE, HUNG_FILE
    from zsfs.testing.cli import output_text

    monkeypatch.setattr(console, "_width", 200)  # one line per row, whatever COLUMNS says

    def fake_extract(source, out, *, on_start, on_batch, **kwargs):
        on_start(0)
        return zsfs.extract.ExtractSummary(
            output=Path("s.h5"), n_images=1, n_skipped=4, skipped_reasons={"truncated file": 1, "not an image": 3},
            shards_written=1, shards_reused=0, images_processed=5, seconds=1.0, embedding_seconds=1.0,
            vocabulary=None, set_aside={"bomb.png": f"{CRASHING_FILE} (signal SIGSEGV)",
                                        "slow.tif": HUNG_FILE.format(seconds=600)})

    monkeypatch.setattr(zsfs.extract, "extract", fake_extract)
    monkeypatch.chdir(tmp_path)
    said = output_text(run_cli("extract", "photos"))
    assert re.search(r"skipped │ 4 \(`zsfs info --skipped` lists them\) │ │ not an image │ 3 │ │ truncated file │ 1 │",
                     said), said  # every reason, the most frequent first
    assert "│ vocabulary │ none │" in said
    assert "Note: 1 file crashed the image decoder and was set aside (skipped): bomb.png." in said
    assert "Note: 1 file hung the image decoder and was set aside (skipped): slow.tif." in said


def test_text_runs_where_device_says(tmp_path):
    """Bug class: an option parsed and then not passed on. An absent GPU is named before the store is read."""
    import torch

    (tmp_path / "c.txt").write_text("cat\n")
    for device, words, present in (("cuda", "no CUDA GPU", torch.cuda.is_available()),
                                   ("mps", "no Apple GPU", torch.backends.mps.is_available())):
        if present:
            continue
        result = run_cli("text", tmp_path / "missing.h5", "--classes", tmp_path / "c.txt", "--name", "x",
                         "--device", device)
        assert result.exit_code == 2 and f"--device {device} was asked for, but torch sees {words} here; use " \
            "--device cpu" in " ".join(result.output.split()), result.output


def test_text_message_shows_names_verbatim(tmp_path, monkeypatch):
    import zsfs.vocabulary

    monkeypatch.setattr(zsfs.vocabulary, "add_vocabulary", lambda *args, **kwargs: ["[a]", "b"])
    monkeypatch.chdir(tmp_path)
    result = run_cli("text", "s[/x].h5", "--classes", "c.txt", "--name", "[pets]")
    assert result.exit_code == 0, result.output
    assert "Vocabulary [pets] (2 classes) written to s[/x].h5" in result.output


def _store_summary() -> dict:
    model = {"name": "[clip]", "weights": "w[/x].pt", "dim": 4}
    return {
        "path": "st[/x]ore.h5", "zsfs_version": "0", "created": "now", "source": "photos/[draft]",
        "n_images": 2, "n_skipped": 1, "skipped_reasons": {"bad [/x] file": 1}, "has_labels": True,
        "labels": {"[lab]el": 2},
        "dtype": "float16", "n_shards": 1, "shards_folder": "x]ore.shards", "index": {"type": "flat", "metric": "ip"},
        "neighbour_graph": None,
        "clip": model, "backbone": {**model, "name": "[backbone]"}, "vocabularies": {"[v]": ["[a]", "b"]},
    }


def test_info_tables_show_user_strings_verbatim(capsys):
    from zsfs.cli.store import show_summary

    show_summary(_store_summary(), "`zsfs text st[/x]ore.h5 --classes FILE --vocab NAME`")
    err = capsys.readouterr().err
    for text in ("st[/x]ore.h5", "photos/[draft]", "bad [/x] file", "[clip]", "w[/x].pt", "[backbone]", "[v]",
                 "[a]; b", "1 label: [lab]el (2)"):
        assert text in err
    show_summary({**_store_summary(), "vocabularies": {}}, "`zsfs text st[/x]ore.h5 --classes FILE --vocab NAME`")
    assert "No vocabularies yet: add one with `zsfs text st[/x]ore.h5 --classes FILE --vocab NAME`." in capsys.readouterr().err


def test_info_tables_show_the_stores_counts(capsys, monkeypatch):
    """Each row of `zsfs info` is its own figure: images and skipped files apart, the labels past
    the tenth counted, the graph's k, each vocabulary's class count and first five classes."""
    from zsfs.cli.console import console
    from zsfs.cli.store import show_summary

    monkeypatch.setattr(console, "_width", 200)  # one line per row
    summary = {**_store_summary(), "n_images": 7, "n_skipped": 3, "skipped_reasons": {"truncated file": 2, "empty file": 1},
               "labels": {f"l{i}": i + 1 for i in range(12)}, "n_shards": 2,
               "neighbour_graph": {"k": 5, "search": "exact", "precision": "bf16"},
               "vocabularies": {"v": list("abcdef")}}
    show_summary(summary, "`zsfs text ...`")
    err = " ".join(capsys.readouterr().err.split())
    for row in ("│ images │ 7 │", "│ skipped │ 3 (truncated file: 2; empty file: 1; `zsfs info --skipped` lists them) │",
                "│ labels │ 12 labels: l0 (1); l1 (2);", "l9 (10); ... and 2 more (`zsfs info --json` lists all) │",
                "│ stored as │ float16, 2 shards │", "│ neighbour graph │ 5 per image (exact, bf16) │",
                "│ v │ 6 │ a; b; c; d; e; ... │"):
        assert row in err, row
    assert "l10 (11)" not in err


def test_info_cuts_long_class_and_label_names_in_its_previews(capsys, monkeypatch):
    """Walkthrough: a 5,000-character class name from a class file filled a screen of `zsfs info`."""
    from zsfs.cli.console import console
    from zsfs.cli.store import PREVIEW_CHARACTERS, show_summary

    monkeypatch.setattr(console, "_width", 200)
    long_name = "x" * 5000
    show_summary({**_store_summary(), "labels": {long_name: 3, "cat": 1}, "vocabularies": {"v": [long_name, "dog"]}},
                 "`zsfs text ...`")
    err = " ".join(capsys.readouterr().err.split())
    cut = "x" * (PREVIEW_CHARACTERS - 1) + "…"
    assert f"2 labels: {cut} (3); cat (1)" in err and f"│ v │ 2 │ {cut}; dog │" in err, err
    assert "x" * PREVIEW_CHARACTERS not in err


def test_the_precisions_the_cli_offers_are_the_ones_the_code_knows():
    """The CLI lists precisions before torch is imported (zsfs.devices); the dtype tables must agree."""
    from zsfs import devices, embedding
    from zsfs.fit.neighbours import SEARCH_DTYPES

    assert tuple(embedding.AUTOCAST_DTYPES) == devices.MODEL_PRECISIONS  # zip would drop a name without a dtype
    assert tuple(SEARCH_DTYPES) == devices.SEARCH_PRECISIONS
    assert set(devices.PRECISION_CHOICES) == {"auto", *SEARCH_DTYPES}


def test_the_fit_options_name_every_parameter_with_the_configs_choices_and_defaults():
    """The CLI is built without importing torch, so it cannot read FitConfig: its option names and
    the defaults its help shows ("[16]", "[512; paper: 16]") are written out and must agree with
    FitConfig() and FitConfig.paper() (the choices come from zsfs.methods and zsfs.devices)."""
    import dataclasses
    import re

    from zsfs.cli.fit import PARAMETERS, fit_command
    from zsfs.fit.config import FitConfig

    assert sorted(PARAMETERS) == sorted(field.name for field in dataclasses.fields(FitConfig))
    options = {param.name: param for param in fit_command.params if param.name in PARAMETERS}
    assert sorted(options) == sorted(PARAMETERS)

    def value(text: str, option, current):
        if isinstance(current, bool):  # "[unique; paper: duplicate]" for --unique-labels/--duplicate-labels
            [meant] = [flag in option.opts for flag in option.opts + option.secondary_opts
                       if flag.lstrip("-") == text or flag.lstrip("-").startswith(text + "-")]
            return meant
        return type(current)(float(text)) if isinstance(current, (int, float)) else text

    checked = 0
    for name, option in options.items():
        shown_defaults = re.search(r"\[([^\]]+)\]\.?$", option.help or "")
        if shown_defaults is None:
            continue
        default, *presets = [part.strip() for part in shown_defaults.group(1).split(";")]
        assert value(default, option, getattr(FitConfig(), name)) == getattr(FitConfig(), name), name
        for preset in presets:
            which, text = preset.split(": ")
            config = FitConfig.paper() if which == "paper" else FitConfig.fast()
            assert value(text, option, getattr(config, name)) == getattr(config, name), (name, which)
        checked += 1
    assert checked >= 15
    # the algorithm's constants the help texts name
    from zsfs.fit.neighbours import IVF_MIN_ROWS
    from zsfs.fit.transductive import CYCLE_FRACTIONS, MIN_CYCLE_UPDATES
    from zsfs.store.index import EXACT_MAX

    help_of = {name: " ".join(option.help.split()) for name, option in options.items()}
    assert f"each of the balanced method's {len(CYCLE_FRACTIONS)} " in help_of["cycle_epochs"]
    assert f"until its head has made {MIN_CYCLE_UPDATES} updates" in help_of["cycle_epochs"]
    assert f"it has {IVF_MIN_ROWS // 1000}k images or more" in help_of["ivf_neighbours"]
    assert f"(up to {EXACT_MAX // 1000}k images;" in help_of["ivf_neighbours"]


def test_other_options_show_the_library_defaults():
    """Written out in the CLI for the same reason (no torch at --help)."""
    from zsfs.cli.extract import extract as extract_command
    from zsfs.cli.predict import predict as predict_command
    from zsfs.cli.store import neighbours_command
    from zsfs.shard_embedder import DEFAULT_BATCH_SIZE
    from zsfs.fit.neighbours import GRAPH_K, GRAPH_MAX_K

    def option(command, name):
        [found] = [param for param in command.params if param.name == name]
        return found

    assert option(extract_command, "batch_size").default == option(predict_command, "batch_size").default == \
        DEFAULT_BATCH_SIZE
    import inspect

    from zsfs.cli.report import report_command
    from zsfs.extract import extract as library_extract
    from zsfs.report import OOD_IMAGES

    library = inspect.signature(library_extract).parameters
    for name in ("clip_model", "clip_weights", "backbone", "backbone_weights", "vocab_name", "device", "precision",
                 "shard_size", "dtype"):
        assert option(extract_command, name).default == library[name].default, name
    assert option(report_command, "ood_images").default == OOD_IMAGES
    k = option(neighbours_command, "k")
    assert k.default is None and f"[default: {GRAPH_K}, or every other image" in k.help and k.type.max == GRAPH_MAX_K


def test_a_worker_killed_for_want_of_shared_memory_is_explained():
    """Torch's words when a decoding worker dies of a SIGBUS in a full /dev/shm (Docker's 64 MB):
    it was not an OSError, so it reached the user as a traceback."""
    from zsfs.cli.group import describe_os_error
    from zsfs.errors import shared_memory_full

    died = RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly: killed by signal: Bus error. It is "
                        "possible that dataloader's workers are out of shared memory. Please try to raise your "
                        "shared memory limit.")
    assert shared_memory_full(died) and not shared_memory_full(RuntimeError("a bug"))
    assert describe_os_error(died).startswith("shared memory (/dev/shm) is full")
    assert not shared_memory_full(OSError(28, "No space left on device"))  # a full disk is a full disk


def test_the_command_list_says_what_each_command_does_uncut():
    """Bug: `zsfs --help` cut every summary but one ("Label and OOD-score every image of STORE from its class...")."""
    result = run_cli("--help")
    listed = result.output.split("Commands:")[1].strip().splitlines()
    assert len(listed) == 9 and not [line for line in listed if line.rstrip().endswith("...")], result.output


def test_the_help_of_every_list_reader_says_that_hash_lines_are_comments(tmp_path):
    """A .txt list skips lines starting with '#'; extract's and predict's --help did not say so, so
    a file named '#1.jpg' went missing unexplained."""
    for command in ("extract", "predict"):
        said = " ".join(run_cli(command, "--help").output.split())
        assert re.search(r"\.txt (list )?\(one path per line; (lines starting with )?'#'( lines)? are comments\)", said), said
    from zsfs.sources import open_source

    (tmp_path / "todo.txt").write_text("# made by hand\na.jpg\n")
    assert open_source(tmp_path / "todo.txt").paths == ["a.jpg"]


def test_every_command_has_examples_that_copy_whole():
    """Bug: ood-bench's and predict's examples (click epilogs) were rewrapped at 80 columns, so a
    copied first line ended in '--out' and failed."""
    from click.testing import CliRunner

    from zsfs.cli import main

    for name in main.list_commands(None):
        text = CliRunner().invoke(main, [name, "--help"], terminal_width=80).output
        examples = text.split("Example:")[1].split("Options:")[0] if "Example:" in text else ""
        lines = [line.strip() for line in examples.splitlines() if line.strip()]
        continued = [False] + [line.endswith("\\") for line in lines[:-1]]  # a shell line continuation
        assert lines and all(line.startswith("zsfs ") or after for line, after in zip(lines, continued)), (name, text)


def test_the_readme_tiny_model_flags_are_the_tests_own():
    """The README's no-weights route names the tiny models the tests use: it must not go stale."""
    from zsfs.testing.models import TINY_MODELS

    root = Path(__file__).resolve().parents[1]
    readme = " ".join((root / "README.md").read_text().split())
    flags = re.search(r"`(--clip-model \S+ --clip-weights \S+ --backbone \S+ --backbone-weights \S+)`", readme)
    assert flags is not None
    given = dict(zip(*[iter(flags.group(1).split())] * 2))
    assert (root / given["--clip-model"]).resolve() == Path(TINY_MODELS["clip_model"]).resolve()
    assert [given["--clip-weights"], given["--backbone"], given["--backbone-weights"]] == [
        TINY_MODELS["clip_weights"], TINY_MODELS["backbone"], TINY_MODELS["backbone_weights"]]


def test_info_verify_counts_what_it_read(tmp_path):
    """`zsfs info --verify` says how many shards and vocabularies it checked, and whether a graph."""
    from zsfs.neighbour_graph import add_neighbour_graph
    from zsfs.store import Store
    from zsfs.testing.cli import output_text
    from zsfs.testing.synthetic import make_synthetic_store

    path = make_synthetic_store(tmp_path / "s.h5", 60, 3, clip_dim=16, backbone_dim=16, shard_size=20)
    result = run_cli("info", "--verify", path)
    assert result.exit_code == 0, result.output
    with Store(path) as store:
        read = store.verify()["bytes_read"]
    assert (f"Verified: 3 shards against their recorded checksums, the master's text against its checksum, 1 "
            f"vocabulary, no neighbour graph and the index: "
            f"{read:,} bytes read, no damage found.") in output_text(result)
    add_neighbour_graph(path, k=3)
    assert "1 vocabulary, the neighbour graph and the index" in output_text(run_cli("info", "--verify", path))


def test_a_library_message_is_one_short_line_and_a_bare_one_names_its_type():
    from zsfs.errors import one_line

    assert one_line(ValueError("spans\n  two   lines")) == "spans two lines"
    assert one_line(KeyError("h")) == "KeyError: 'h'"  # "'h'" alone says nothing
    assert one_line(OSError()) == "OSError"  # bug: "OSError: OSError", the type standing in for the message twice
    long = one_line(RuntimeError("x" * 1000))
    assert len(long) == 300 and long.endswith("...")  # no space to cut at: cut where the room ends
    # bug (new user): the hub's message was cut mid-word ("make sure your Interne...")
    words = one_line(RuntimeError("make sure your Internet connection is on " * 20), limit=60)
    assert words == "make sure your Internet connection is on make sure your..."
    assert one_line(RuntimeError("abcdefghij klmnop qrstuv"), limit=20) == "abcdefghij klmnop..."  # the room's last word
    assert one_line(RuntimeError("is on. make sure it is"), limit=12) == "is on..."  # no ". ..."


def test_every_option_of_every_command_says_what_it_does():
    """Review: `extract --batch-size` and `predict --batch-size` showed no description in --help."""
    import click

    from zsfs.cli import main

    def commands(group: click.Group, prefix: str = ""):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command

    silent = [f"{name} {option.opts[0]}" for name, command in commands(main) for option in command.params
              if isinstance(option, click.Option) and not option.hidden and not (option.help or "").strip()]
    assert silent == []


def test_an_output_file_given_as_a_folder_suggests_a_file_in_it(tmp_path):
    """Review: `--out sub/` gave click's bare "File 'sub/' is a directory."."""
    (tmp_path / "sub").mkdir()
    for args, example in ((("extract", tmp_path, "--out", f"{tmp_path}/sub/"), "STORE.h5"),
                          (("predict", "--run", tmp_path, "--out", tmp_path / "sub", tmp_path), "predictions.csv"),
                          (("report", tmp_path, "--out", tmp_path / "sub"), "report.html")):
        result = run_cli(*args)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"is a folder; give a file in it, such as {tmp_path / 'sub' / example}" \
            in said, (args, said)
    # review: a folder not there yet, named with a slash, became a store file named "new"
    for args in (("extract", tmp_path, "--out", f"{tmp_path}/new/"),
                 ("import", f"{tmp_path}/new/", "--clip-embeddings", tmp_path, "--backbone-features", tmp_path)):
        said = " ".join(run_cli(*args).output.split())
        assert f"'{tmp_path}/new/' names a folder; give a file in it, such as {tmp_path}/new/STORE.h5" in said, said
    assert not (tmp_path / "new").exists()


def test_folders_made_on_the_way_to_an_output_are_named(tmp_path):
    """Review: `--out /nonexistent/dir/x.h5` made /nonexistent/dir without a word: a typo in a path
    scatters outputs over the disk."""
    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 60, 3, seed=0, clip_dim=16, backbone_dim=16)
    run = tmp_path / "made" / "deeper" / "run"
    result = run_cli("fit", "--store", store, "--k", "2", "--cycle-epochs", "1", "--out", run)
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and f"Note: made the folder {tmp_path / 'made'} (it was not there) for {run}." in said
    page = tmp_path / "made" / "pages" / "r.html"
    said = " ".join(run_cli("report", run, "--out", page).output.split())
    assert f"Note: made the folder {tmp_path / 'made' / 'pages'} (it was not there) for {page}." in said, said
    again = run_cli("report", run, "--out", page)
    assert again.exit_code == 0 and "made the folder" not in again.output  # there now


def test_a_short_runs_bar_ends_with_its_rate():
    """Review: a run of one batch ended its bar on "… img/s" (rich's speed needs two updates, and
    is None once the task is done)."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from zsfs.cli.console import _ItemsPerSecond

    clock = [100.0]
    progress = Progress(console=Console(file=io.StringIO()), get_time=lambda: clock[0])
    task = progress.add_task("embedding", total=60)
    clock[0] += 2.0
    progress.advance(task, 60)  # one batch: the whole task
    column = _ItemsPerSecond("img")
    assert str(column.render(progress.tasks[0])) == "30.0 img/s"
    waiting = progress.add_task("not started", total=None, start=False)
    assert str(column.render(progress.tasks[waiting])) == "… img/s"


def test_info_tables_show_long_paths_whole(capsys, monkeypatch):
    """Review: a source path longer than the terminal's column was cut ("…/hostile0/ph\\xf6…")."""
    from zsfs.cli.console import console
    from zsfs.cli.store import show_summary

    monkeypatch.setattr(console, "_width", 80)
    source = "/data/" + "/".join(f"level-{i:02d}" for i in range(20)) + "/photos"
    weights = "/models/" + "x" * 90 + "/clip.pt"
    show_summary({**_store_summary(), "source": source, "clip": {"name": "c", "weights": "file", "file": weights, "dim": 4}},
                 "`x`")
    lines = capsys.readouterr().err.splitlines()
    values = "".join(line.split("│")[2].strip() for line in lines if line.count("│") == 3)  # the store's rows
    weights_column = "".join(line.split("│")[3].strip() for line in lines if line.count("│") == 5)  # the models'
    assert "…" not in "".join(lines) and source in values and f"file{weights}" in weights_column  # folded after "file "


def test_info_names_a_stores_weights_file_and_a_backbones_timm_tag(capsys, monkeypatch):
    """Walkthrough: the Models table said "file" and not which, though `text` and `predict` need that
    file again; timm's "default" names another tag in another timm version."""
    from zsfs.cli.console import console
    from zsfs.cli.store import show_summary

    monkeypatch.setattr(console, "_width", 200)
    show_summary({**_store_summary(), "clip": {"name": "c", "weights": "file", "file": "/m/clip.pt", "dim": 4},
                  "backbone": {"name": "b", "weights": "default", "pretrained_tag": "laion2b", "dim": 8}}, "`x`")
    err = " ".join(capsys.readouterr().err.split())
    assert "│ clip │ c │ file /m/clip.pt │ 4 │" in err and "│ backbone │ b │ default (laion2b) │ 8 │" in err


def test_the_edges_of_what_errors_say():
    """Review (mutation): the largest seed is taken (faiss' 32-bit range), h5py's "file too large"
    (errno 27) is a full disk, a failed probe for a temporary folder says so, and `info`'s escapes
    read back one way (a backslash doubled; JSON pointers escape "~" before "/", RFC 6901)."""
    from zsfs.cli.group import describe_os_error
    from zsfs.errors import MAX_SEED, ParameterError, check_seed, is_disk_full
    from zsfs.names import escaped_name, json_text

    check_seed(0)
    check_seed(MAX_SEED)
    with pytest.raises(ParameterError, match=f"seed must be between 0 and {MAX_SEED}, not {MAX_SEED + 1}"):
        check_seed(MAX_SEED + 1)
    assert is_disk_full(RuntimeError("Can't write data (file write failed: errno = 27, error message = 'x')"))
    assert not is_disk_full(RuntimeError("Can't write data (errno = 2)"))
    probe = FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")
    assert describe_os_error(probe).endswith(": the disk may be full; free some space (or set TMPDIR) and rerun")
    assert escaped_name("a\\x0a\nb") == "a\\\\x0a\\x0ab"
    escaped: list[str] = []
    assert json_text({"x/y~\udcff": ["ok", "z\udce9"]}, escaped=escaped) == {"x/y~\\xff": ["ok", "z\\xe9"]}
    assert escaped == ["/x~1y~0\\xff", "/x~1y~0\\xff/1"]


def test_a_standard_stream_closed_at_the_start_drops_messages_or_fails_the_asked_for_output(tmp_path):
    """Walkthrough: with stderr closed (`2>&-`) every command exited 1 in silence and fit wrote no run
    (Python makes a closed stream None); with stdout closed, `info --json` exited 0 with the JSON lost
    and predict --json printed a traceback."""
    import shlex

    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 30, 3, seed=0, clip_dim=8, backbone_dim=8)
    zsfs = f"{shlex.quote(sys.executable)} -m zsfs"
    fitted = subprocess.run(["bash", "-c", f"{zsfs} fit --store {store} --k 2 --candidates 4 --out {tmp_path / 'run'} "
                                           "2>&-"], capture_output=True, text=True, timeout=300)
    assert fitted.returncode == 0 and (tmp_path / "run" / "predictions.parquet").is_file(), fitted.stdout
    info = subprocess.run(["bash", "-c", f"{zsfs} info {store} --json >&-"], capture_output=True, text=True, timeout=300)
    assert info.returncode == 1 and info.stderr.strip() == "Error: Bad file descriptor (stdout is closed)", info.stderr
    # walkthrough: fit --json fitted (minutes on a large store), saved its run, then failed to print
    json_fit = subprocess.run(["bash", "-c", f"{zsfs} fit --store {store} --k 2 --candidates 4 --out "
                                             f"{tmp_path / 'json-run'} --json >&-"], capture_output=True, text=True,
                              timeout=300)
    assert json_fit.returncode == 1 and json_fit.stderr.strip() == "Error: Bad file descriptor (stdout is closed)", \
        json_fit.stderr
    assert not (tmp_path / "json-run").exists()  # refused before the work
    # review: click writes --version before any command runs (it was a traceback)
    version = subprocess.run(["bash", "-c", f"{zsfs} --version >&-"], capture_output=True, text=True, timeout=300)
    assert version.returncode == 1 and version.stderr.strip() == "Error: Bad file descriptor (stdout is closed)"
    # review: the closed descriptors were left free, so the first file a command opened became its stderr
    first_file = tmp_path / "first-file-descriptor"
    opens = (f"import os, zsfs.cli; zsfs.cli.main = lambda: open({str(first_file)!r}, 'w').write("
             "str(os.open(os.devnull, os.O_RDONLY))); zsfs.cli.run()")
    subprocess.run(["bash", "-c", f"exec 1>&- 2>&-; {shlex.quote(sys.executable)} -c {shlex.quote(opens)}"], timeout=300)
    assert int(first_file.read_text()) > 2


def test_a_dumb_terminal_gets_the_progress_lines_a_log_gets(tmp_path):
    """Walkthrough: under TERM=dumb (an Emacs shell, an IDE console) rich draws no spinner or bar, and
    a long extract or fit showed nothing until its end; it now prints the lines a log file gets."""
    import pty

    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 30, 3, seed=0, clip_dim=8, backbone_dim=8)
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "zsfs", "fit", "--store", str(store), "--k", "2", "--candidates",
                                "4", "--out", str(tmp_path / "run")], stdin=follower, stdout=follower, stderr=follower,
                               env={**os.environ, "TERM": "dumb", "COLUMNS": "200"}, close_fds=True)
    os.close(follower)
    said = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        said += chunk
    os.close(leader)
    assert process.wait(timeout=300) == 0, said.decode(errors="replace")
    assert b"fit: saving the run..." in said, said.decode(errors="replace")


def test_a_source_tree_reports_its_own_version_beside_an_installed_copy(tmp_path):
    """Stores and runs recorded the installed package's version from its metadata, also when another
    source tree ran through PYTHONPATH; the version is written once, in zsfs/__init__.py."""
    import shutil

    import zsfs

    assert 'version = {attr = "zsfs.__version__"}' in (Path(zsfs.__file__).parents[1] / "pyproject.toml").read_text()
    tree = tmp_path / "tree"
    shutil.copytree(Path(zsfs.__file__).parent, tree / "zsfs", ignore=shutil.ignore_patterns("__pycache__"))
    init = tree / "zsfs" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{zsfs.__version__}"', '__version__ = "9.9.9"'))
    shown = subprocess.run([sys.executable, "-m", "zsfs", "--version"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == "zsfs, version 9.9.9", shown


def test_a_zero_width_from_columns_still_prints_every_line(tmp_path):
    """Review: COLUMNS=0 (rich took it as the console's width) made every message an empty line: a
    failed command printed no error, a finished fit no summary."""
    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 30, 3, seed=0, clip_dim=8, backbone_dim=8)
    for env in ({"COLUMNS": "0"}, {"COLUMNS": "0", "TERM": "dumb"}):
        failed = subprocess.run([sys.executable, "-m", "zsfs", "info", str(tmp_path / "nope.h5")], capture_output=True,
                                text=True, env={**os.environ, **env}, timeout=120)
        assert failed.returncode == 1 and f"Error: store {tmp_path / 'nope.h5'} does not exist" in \
            " ".join(failed.stderr.split()), failed
    fitted = subprocess.run([sys.executable, "-m", "zsfs", "fit", "--store", str(store), "--k", "2", "--candidates", "4",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "0"}, timeout=300)
    assert fitted.returncode == 0 and "self-training cycles" in fitted.stderr and "Run written to" in fitted.stderr, fitted
