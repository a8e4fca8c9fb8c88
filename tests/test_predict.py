"""zsfs predict: a fitted run classifies new images exactly as fit classified the store's images."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import zsfs
from zsfs.errors import ParameterError, ZsfsError
from zsfs.extract import extract
from zsfs.fit.config import FitConfig
from zsfs.fit.run import fit_store
from zsfs.predict import image_inputs, predict_images, write_predictions
from zsfs.runs import FittedRun, load_run
from zsfs.store import Store
from zsfs.tars import locate_members
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.images import write_image_folder
from zsfs.testing.failures import run_zsfs
from zsfs.testing.forks import run_forked_child
from zsfs.testing.hooks import CRASH_VARIABLE
from zsfs.testing.models import TINY_MODELS
from zsfs.testing.synthetic import make_synthetic_store


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A store of a generated folder (float32, so features match fresh ones) and a run fitted on it."""
    work = tmp_path_factory.mktemp("predict")
    photos = write_image_folder(work / "photos", n_per_class=6)
    store_path = extract(photos["root"], work / "photos.h5", dtype="float32", workers=0, **TINY_MODELS).output
    # three seeds a class: with two, a class's OOD threshold (mean - std) is its lower seed's own
    # statistic, which then flips by a float32 rounding of the CPU's kernels (see same_predictions)
    config = FitConfig(k=3, candidates=6, cycle_epochs=5, batch_size=8)
    with Store(store_path) as store:
        run = FittedRun.from_fit(fit_store(store, config), store, config).save(work / "run").path
    return {"photos": photos, "run": run, "store": store_path, "fit": pl.read_parquet(run / "predictions.parquet")}


def assert_same_predictions(mine: pl.DataFrame, theirs: pl.DataFrame) -> None:
    """Predictions of the same images made in other batches, threads or processes: the same files,
    errors, classes and paper scores; the other scores equal to float32 rounding, which a CPU's
    matrix kernels do differently by batch shape and thread count. ``ood_distance`` is a CDF over
    the fixture's few reference rows, so steep that one rounding moves it by up to ~1e-3."""
    assert mine.columns == theirs.columns
    close = {"confidence", "ood_continuous", "ood_distance"}  # a new score column must be placed here
    assert {name for name, dtype in mine.schema.items() if dtype.is_float()} == close | {"ood_paper"}
    # the flag follows ood_distance across its cut (one a seed's own distance): tested on its own
    exact = [name for name in mine.columns if name not in close | {"ood_distance_flag"}]
    assert mine.select(exact).equals(theirs.select(exact))
    for column, rtol, atol in (("confidence", 1e-4, 1e-5), ("ood_continuous", 1e-4, 1e-3), ("ood_distance", 0, 5e-3)):
        np.testing.assert_allclose(mine[column].to_numpy(), theirs[column].to_numpy(), rtol=rtol, atol=atol,
                                   err_msg=column)


def test_new_images_are_flagged_on_their_distance_at_the_cut_that_flags_at_most_5_percent_of_the_seeds(tmp_path):
    """Docs check: predict gave new images ood_distance alone, and the fit's flag cut is on ood_score
    (its MCM half needs CLIP): nothing said where to flag a new image."""
    path = make_synthetic_store(tmp_path / "s.h5", 600, 4, n_ood_classes=2, seed=0, backbone_dim=24, backbone_noise=1)
    run = zsfs.fit(path, k=16, candidates=60)
    threshold = run.config["ood_distance_flag_threshold"]
    assert threshold == run.classifier.ood_distance_threshold and 0 < threshold < 1
    with Store(path) as store:
        predicted = run.predict(store.read("backbone"))
    seeds = run.predictions["is_seed"].to_numpy()
    # the fit's own rows: their ood_distance as the fit's (to float32 rounding), flagged above the cut
    np.testing.assert_allclose(predicted["ood_distance"].to_numpy(), run.predictions["ood_distance"].to_numpy(), atol=1e-3)
    flag = predicted["ood_distance_flag"].to_numpy()
    np.testing.assert_array_equal(flag, predicted["ood_distance"].to_numpy() > threshold)
    fit_flag = run.predictions["ood_distance"].to_numpy()[seeds] > threshold
    assert fit_flag.sum() <= int(0.05 * seeds.sum()) and fit_flag.sum() > 0
    ood_rows = run.predictions["label"].str.starts_with("ood").to_numpy()
    assert flag[ood_rows].mean() > 2 * flag[~ood_rows].mean()  # the flag means something here
    # a run written before the cut was recorded: the column is there, null
    run.classifier.ood_distance_threshold = None
    assert run.predict(np.ones((2, 24)))["ood_distance_flag"].null_count() == 2


def test_predictions_match_the_fit_on_the_same_images(fitted):
    photos = fitted["photos"]
    frame = predict_images(fitted["run"], [photos["root"]], workers=0)

    good = frame.filter(pl.col("error").is_null())
    assert sorted(Path(p).relative_to(photos["root"]).as_posix() for p in good["path"]) == photos["good"]
    by_path = {Path(p).relative_to(photos["root"]).as_posix(): row for p, row in
               zip(good["path"], good.iter_rows(named=True))}
    fit = {row["path"]: row for row in fitted["fit"].iter_rows(named=True)}
    for path, row in by_path.items():
        assert row["predicted"] == fit[path]["predicted"], path
        assert row["confidence"] == pytest.approx(fit[path]["confidence"], abs=1e-4)
        assert row["ood_paper"] == pytest.approx(fit[path]["ood_paper"], abs=1e-6)
        assert row["ood_distance"] == pytest.approx(fit[path]["ood_distance"], abs=5e-3)
        assert row["ood_continuous"] == pytest.approx(fit[path]["ood_continuous"], abs=1e-3)


def test_an_image_of_the_fit_gets_the_fits_scores_from_a_float16_store(tmp_path):
    """Reproducibility review: predict scored fresh float32 features, the fit the store's float16 ones, so an
    image of the fit got another confidence (2.5e-5 off), ood_distance (8.5e-4 off) and, at the flag cut, flag.
    New features are rounded as the store holds them; a run that records no dtype (before 2026-12-07) reads
    them as they come."""
    photos = write_image_folder(tmp_path / "photos", n_per_class=6)
    store_path = extract(photos["root"], tmp_path / "p.h5", workers=0, **TINY_MODELS).output  # float16
    config = FitConfig(k=3, candidates=6, cycle_epochs=5, batch_size=8)
    with Store(store_path) as store:
        run = FittedRun.from_fit(fit_store(store, config), store, config).save(tmp_path / "run").path
    fit = pl.read_parquet(run / "predictions.parquet")
    assert json.loads((run / "config.json").read_text())["store"]["dtype"] == "float16"

    def joined() -> pl.DataFrame:
        frame = predict_images(run, [photos["root"]], workers=0).filter(pl.col("error").is_null())
        frame = frame.with_columns(path=pl.Series([Path(path).relative_to(photos["root"]).as_posix()
                                                   for path in frame["path"]]))
        return frame.join(fit, on="path", suffix="_fit")

    both = joined()
    assert both.height == len(photos["good"]) and (both["predicted"] == both["predicted_fit"]).all()
    for column in ("confidence", "ood_distance", "ood_continuous", "ood_paper"):
        np.testing.assert_allclose(both[column].to_numpy(), both[f"{column}_fit"].to_numpy(), rtol=0, atol=1e-6,
                                   err_msg=column)
    config_file = run / "config.json"
    recorded = json.loads(config_file.read_text())
    del recorded["store"]["dtype"]
    config_file.write_text(json.dumps(recorded))
    assert joined()["predicted"].null_count() == 0  # an older run: predicted still


def test_library_inputs_are_checked_before_any_work(fitted):
    """Bugs: one folder given as a str was read as its characters (and "/" as a folder); a
    (n, 5) array or NaN rows given to FittedRun.predict gave torch errors or NaN confidences."""
    photos = fitted["photos"]
    alone = predict_images(fitted["run"], str(photos["root"]), workers=0)  # one path, not a list of one
    assert alone.equals(predict_images(fitted["run"], [photos["root"]], workers=0))
    assert predict_images(fitted["run"], photos["root"], workers=0).equals(alone)
    no_run = fitted["run"].parent / "no such run"  # checked before the run is read (review: a mutation checking
    # the precision after every image was embedded passed)
    with pytest.raises(ParameterError, match="^workers must be at least 0, not -1$"):
        predict_images(no_run, photos["root"], workers=-1)
    with pytest.raises(ParameterError, match="^precision must be one of fp32, bf16, fp16, not 'fp8'$"):
        predict_images(no_run, photos["root"], precision="fp8")  # bug: ignored on CPU

    run = load_run(fitted["run"])
    with Store(fitted["store"]) as store:
        features = store.read("backbone")
    width = features.shape[1]
    assert run.predict(features)["predicted"].to_list() == fitted["fit"]["predicted"].to_list()
    for wrong, said in ((features[:, :5], f"must be an \\(n, {width}\\) array of numbers.*shape \\({len(features)}, 5\\)"),
                        (features[0], r"of shape \(" + str(width) + r",\)"),
                        (features.astype(str), "array of numbers"),
                        ([[1.0], [1.0, 2.0]], "ragged rows")):
        with pytest.raises(ParameterError, match=said):
            run.predict(wrong)
    poisoned = features.copy()
    poisoned[3, 0], poisoned[7] = np.nan, 0.0
    with pytest.raises(ParameterError, match=r"features: 2 rows are zero or not finite \(first: row 3, counted from 0\)$"):
        run.predict(poisoned)
    # review: the documented run.classifier.classify gave a class and NaN confidence for NaN rows, and
    # torch's "mat1 and mat2 shapes cannot be multiplied" for another width
    for wrong, said in ((poisoned, "2 rows are zero or not finite"), (features[:, :5], "array of numbers")):
        with pytest.raises(ParameterError, match=said):
            run.classifier.classify(wrong)
    # bug: rows finite in float64 but not as float32 products (1e300) gave NaN scores; no rows warned
    scaled = features[:5].astype(np.float64)
    scaled[:4] *= 1e300
    scaled[4] = scaled[4] / np.abs(scaled[4]).max() * 1e308  # its largest value 1e308: its norm is past float64
    assert_same_predictions(run.predict(scaled), run.predict(features[:5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.predict(features[:0]).shape == (0, 6)


def test_small_batches_give_every_file_its_own_row_and_count_every_file(fitted):
    """Results come back batch by batch, failures within them: each row must still pair the file with
    its own prediction or reason, whatever the batch size; progress counts every file once."""
    root = fitted["photos"]["root"]
    whole = predict_images(fitted["run"], [root], workers=0)
    started, advanced = [], []
    batched = predict_images(fitted["run"], [root], workers=0, batch_size=3, on_start=started.append,
                             on_batch=advanced.append)
    assert 0 < whole["error"].null_count() < whole.height  # good and bad files in the batches
    assert_same_predictions(batched, whole)
    assert started == [whole.height] and sum(advanced) == whole.height and max(advanced) <= 3


def test_features_are_classified_batch_by_batch(fitted, monkeypatch):
    """bug: every image's features were kept until the end and then copied into one array (2 x N x D
    floats: 120 GB for 10M images at 1536 dimensions); each batch is now classified as it comes."""
    from zsfs.fit.classifier import Classifier

    classified = []
    classify = Classifier.classify

    def counted(self, features, *args, **kwargs):
        classified.append(len(features))
        return classify(self, features, *args, **kwargs)

    monkeypatch.setattr(Classifier, "classify", counted)
    root = fitted["photos"]["root"]
    batched = predict_images(fitted["run"], [root], workers=0, batch_size=3)

    assert classified and max(classified) <= 3 and sum(classified) == batched["error"].null_count()
    monkeypatch.undo()
    assert_same_predictions(batched, predict_images(fitted["run"], [root], workers=0))


def test_the_pixel_budget_reaches_the_decoder(fitted, tmp_path):
    """--max-pixels (and the library's max_pixels) is the decoding budget of each image, as in extract."""
    photos = fitted["photos"]
    png = next(photos["root"] / path for path in photos["good"] if path.endswith(".png"))  # no smaller decode
    frame = predict_images(fitted["run"], [png], workers=0, max_pixels=100)
    assert frame["error"].to_list() == ["image too large (over the budget of 100 pixels, see --max-pixels)"]
    out = tmp_path / "p.csv"
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--max-pixels", "100", "--out", out, png)
    assert result.exit_code == 1 and "no image could be read" in output_text(result)
    assert pl.read_csv(out)["error"].to_list() == frame["error"].to_list()
    assert predict_images(fitted["run"], [png], workers=0)["error"].to_list() == [None]


def test_unreadable_files_get_an_error_not_a_prediction(fitted):
    photos = fitted["photos"]
    bad = [photos["root"] / relative for relative in photos["bad"]]
    frame = predict_images(fitted["run"], bad, workers=0)

    assert frame.height == len(bad)
    assert frame["error"].null_count() == 0
    assert frame["predicted"].null_count() == frame.height
    assert frame["confidence"].null_count() == frame.height
    # Bug: the command exited 0 when no image at all was classified.
    out = fitted["run"].parent / "all-unreadable.csv"
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", out, *bad)
    assert result.exit_code == 1 and f"no image could be read ({len(bad)} images given; the rows say why)" in output_text(result)
    assert pl.read_csv(out)["error"].null_count() == 0  # the rows that say why are still written


def test_a_jpeg_still_being_written_into_room_reserved_for_it_is_skipped_as_truncated(fitted, tmp_path):
    """Bug (a nightly predict over the day's incoming folder): a JPEG copied by a tool that sizes
    the file first (a Windows or SMB copy, a download manager) ends in zeros until the copy is done;
    libjpeg decoded them as flat grey and predict labelled the image, error null, exit 0 (as a
    folder, and as a tar member). A whole JPEG padded with zeros after its end marker is still read."""
    from PIL import Image

    encoded = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(encoded, "JPEG")
    whole = encoded.getvalue()
    day = tmp_path / "day"
    day.mkdir()
    (day / "whole.jpg").write_bytes(whole)
    (day / "padded.jpg").write_bytes(whole + bytes(4096))
    (day / "incoming.jpg").write_bytes(whole[: len(whole) // 2] + bytes(len(whole) - len(whole) // 2))
    with tarfile.open(tmp_path / "day.tar", "w") as tar:
        tar.add(day / "incoming.jpg", "incoming.jpg")
    frame = predict_images(fitted["run"], [day, tmp_path / "day.tar"], workers=1)  # decoded in a worker process
    errors = dict(zip((Path(path).name for path in frame["path"]), frame["error"]))
    assert errors["whole.jpg"] is None and errors["padded.jpg"] is None
    assert errors["incoming.jpg"] == errors["day.tar::incoming.jpg"] == \
        "truncated file (its end is zeros: still being written?)"
    assert frame.filter(pl.col("error").is_not_null())["predicted"].null_count() == 2


def test_images_the_model_gives_no_usable_features_get_that_error_not_a_label(fitted, monkeypatch):
    """Bug: a NaN row (an fp16 overflow on a GPU) got class 0, a null confidence and an
    in-distribution ood_paper, and an all-zero row a class at 1/C confidence; extract skips both."""
    import torch

    from zsfs.shard_embedder import NO_FEATURES
    from zsfs.models import Backbone

    good = sorted(fitted["photos"]["root"] / relative for relative in fitted["photos"]["good"])[:8]
    unchanged = predict_images(fitted["run"], good, workers=0, batch_size=4)
    encode = Backbone.encode_images

    def overflowing(self, pixels):  # the first image of each batch NaN, the second all zero
        features = encode(self, pixels)
        features[0] = torch.nan
        features[1] = 0.0
        return features

    monkeypatch.setattr(Backbone, "encode_images", overflowing)
    frame = predict_images(fitted["run"], good, workers=0, batch_size=4)
    failed = [0, 1, 4, 5]
    assert frame["error"].to_list() == [NO_FEATURES if i in failed else None for i in range(8)]
    for column in ("predicted", "confidence", "ood_distance", "ood_distance_flag", "ood_paper", "ood_continuous"):
        assert frame[column].is_null().to_list() == [i in failed for i in range(8)], column
    kept = [2, 3, 6, 7]  # the others keep their own rows (classified without the failed ones)
    assert_same_predictions(frame[kept], unchanged[kept])


def test_a_file_that_crashes_its_decoding_process_gets_that_error_and_the_rest_their_predictions(fitted, tmp_path):
    """Bug: one file crashing the decoder (SIGSEGV, in a child process here, for real) ended the
    whole predict with an error, whatever the other images were."""
    root = fitted["photos"]["root"]
    crashing = sorted((root / "green").glob("*.png"))[2]
    out, expected = tmp_path / "crashed.csv", tmp_path / "expected.csv"
    args = ["predict", "--run", str(fitted["run"]), str(root), "--workers", "1", "--batch-size", "2", "--out"]
    script = ("from zsfs.testing.hooks import hooked_workers\nhooked_workers()\n"
              f"from zsfs.cli import main\nmain({args + [str(out)]!r})\n")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, CRASH_VARIABLE: crashing.name})
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
    assert run_cli(*args, expected).exit_code == 0
    crashed, clean = pl.read_csv(out), pl.read_csv(expected)
    row = crashed["path"].str.ends_with(crashing.name)
    assert crashed.filter(row)["error"].to_list() == ["crashes the image decoder (killed by SIGSEGV)"]
    # the images batched with it went through the model in a smaller batch: equal up to float rounding
    assert_same_predictions(crashed.filter(~row), clean.filter(~row))


def test_the_summary_line_is_one_line_in_a_log(fitted, tmp_path):
    """Review (a nightly cron job): in a log, 80 columns wide, the summary put its output's path on the next line."""
    photos = fitted["photos"]
    out = tmp_path / ("nightly-" + "x" * 60) / "predictions.csv"
    out.parent.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    logged = subprocess.run([sys.executable, "-m", "zsfs", "predict", "--run", str(fitted["run"]), "--workers", "0",
                             str(photos["root"] / photos["good"][0]), "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert logged.returncode == 0, logged.stderr
    assert any(line.startswith("1 image classified, ") and line.endswith(f"0 skipped; all rows written to {out}")
               for line in logged.stderr.splitlines()), logged.stderr


def test_the_table_says_a_read_failure_is_no_class(fitted):
    """Bug: a file's read failure stood bare in the "predicted" column, as if "truncated file" were a class."""
    photos = fitted["photos"]
    bad = photos["root"] / next(iter(photos["bad"]))
    outcome = run_zsfs("predict", "--run", fitted["run"], "--workers", "0", bad, photos["root"] / photos["good"][0])
    assert outcome.returncode == 0, outcome.output
    reason = predict_images(fitted["run"], [bad], workers=0)["error"][0]
    failed = next(line for line in outcome.output.splitlines() if str(bad) in line)  # one line: 400 columns
    assert [cell.strip() for cell in failed.split("│")[1:-1]] == [str(bad), f"skipped: {reason}", "-", "-", "-"]
    flagged = int(predict_images(fitted["run"], [photos["root"] / photos["good"][0]], workers=0)["ood_distance_flag"][0])
    assert f"1 image classified, {flagged} flagged OOD, 1 skipped" in outcome.output


def test_predict_says_a_run_fitted_before_the_flag_cut_was_recorded_flags_nothing(fitted, tmp_path):
    """Upgrade test: an older run's ood_distance_flag was null without a word, as if nothing were flagged."""
    from zsfs.fit.classifier import load_classifier

    run = tmp_path / "old-run"
    shutil.copytree(fitted["run"], run)
    classifier = load_classifier(run / "classifier.pt")
    classifier.ood_distance_threshold = None
    classifier.save(run / "classifier.pt")
    image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    outcome = run_zsfs("predict", "--run", run, "--workers", "0", image)
    said = " ".join(outcome.output.split())
    assert outcome.returncode == 0 and "1 image classified, 0 skipped Note: no image is flagged OOD: the run was " \
        "fitted before zsfs recorded its flag's cut (2026-12-06); fit it again to flag new images." in said, said


def test_a_missing_input_is_refused_before_the_backbone_loads(fitted, tmp_path, monkeypatch):
    """Bug: `zsfs predict --run R missing.jpg` loaded the backbone (10 s on a real one) before saying so."""
    import zsfs.predict

    def loading(*args, **kwargs):
        raise AssertionError("the backbone was loaded first")

    monkeypatch.setattr(zsfs.predict, "load_backbone_from_record", loading)
    with pytest.raises(ZsfsError, match="does not exist"):
        predict_images(fitted["run"], [fitted["photos"]["root"], tmp_path / "missing.jpg"])


def test_a_classifier_file_with_flipped_bits_is_refused_as_damaged(fitted, tmp_path):
    """Failure test: a bit flipped in classifier.pt's weights was read as is (torch.load checks no
    checksum): predict gave 10 of 24 images another label, each at confidence 1, with exit 0."""
    from zsfs.fit.classifier import load_classifier

    run = tmp_path / "run"
    shutil.copytree(fitted["run"], run)
    path = run / "classifier.pt"
    with zipfile.ZipFile(path) as archive:  # the bytes of the largest tensor, the OOD reference or the weights
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    header = largest.header_offset  # a local header: 30 bytes, the name, an extra field (its length at 28), the data
    at = header + 30 + len(largest.filename) + int.from_bytes(data[header + 28 : header + 30], "little")
    data[at + largest.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ZsfsError, match=rf"classifier.pt is damaged \(its part '{largest.filename}' does not match "
                                        r"the checksum it was written with\); rerun `zsfs fit` to write it again$"):
        load_classifier(run)
    outcome = run_cli("predict", "--run", run, fitted["photos"]["root"])
    assert outcome.exit_code == 1 and "is damaged" in output_text(outcome), outcome.output


def test_a_classifier_saved_where_torch_records_no_crc_loads(fitted, tmp_path):
    """Review: torch.serialization.set_crc32_options(False), a documented speed-up, made torch.save
    record CRC 0 for every member, which the damage check then refused; the save records them now, and
    a file saved so elsewhere (no CRC at all) is read unchecked."""
    import torch

    from zsfs.fit.classifier import load_classifier

    classifier = load_classifier(fitted["run"])
    torch.serialization.set_crc32_options(False)
    try:
        classifier.save(tmp_path / "ours.pt")
        torch.save(torch.load(tmp_path / "ours.pt", weights_only=True), tmp_path / "theirs.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    for name in ("ours.pt", "theirs.pt"):
        np.testing.assert_array_equal(load_classifier(tmp_path / name).weight, classifier.weight)
    with zipfile.ZipFile(tmp_path / "ours.pt") as ours, zipfile.ZipFile(tmp_path / "theirs.pt") as theirs:
        assert all(member.CRC for member in ours.infolist()) and not any(member.CRC for member in theirs.infolist())


@pytest.mark.parametrize("damage", ["weight", "width", "bias", "reference", "nearest", "quantiles", "statistics"])
def test_a_classifier_whose_arrays_disagree_is_damaged_not_a_torch_error(fitted, tmp_path, damage):
    """Bug: a hand-edited classifier.pt gave torch's "mat1 and mat2 shapes cannot be multiplied"
    (or an IndexError) after every image had been decoded."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(fitted["run"], run)
    state = torch.load(run / "classifier.pt", weights_only=True)
    if damage == "weight":  # a row fewer than classes (review: a mutation dropping this check passed)
        state["weight"], state["bias"] = state["weight"][:-1], state["bias"][:-1]
    elif damage == "width":  # every array agrees, but not with the backbone's features
        state["weight"], state["ood_reference"] = state["weight"][:, :-3], state["ood_reference"][:, :-3]
    elif damage == "statistics":
        state["ood"]["mean"] = state["ood"]["mean"][:2]
    elif damage == "bias":
        state["bias"] = torch.cat([state["bias"], state["bias"]])
    elif damage == "reference":
        state["ood_reference"] = state["ood_reference"][:0]
    elif damage == "nearest":
        state["ood_nearest"] = 0
    else:
        state["ood_quantiles"] = {name: q[:0] for name, q in state["ood_quantiles"].items()}
    torch.save(state, run / "classifier.pt")
    with pytest.raises(ZsfsError, match=r"classifier.pt is a damaged zsfs classifier \(.*\); rerun `zsfs fit`"):
        predict_images(run, [fitted["photos"]["root"]], workers=0)


def test_cli_writes_every_row_and_prints_json(fitted, tmp_path):
    photos = fitted["photos"]
    one_image = photos["root"] / photos["good"][0]
    out = tmp_path / "predictions.csv"
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", out, "--json", one_image,
                     photos["root"])

    assert result.exit_code == 0, result.output
    written = pl.read_csv(out)
    assert written.height == 1 + len(photos["good"]) + len(photos["bad"])
    assert set(written.columns) == {"path", "predicted", "confidence", "ood_distance", "ood_distance_flag", "ood_paper",
                                    "ood_continuous", "error"}
    first = json.loads(result.stdout.splitlines()[0])
    assert first["path"] == str(one_image) and first["predicted"] in fitted["fit"]["predicted"].to_list()
    # review: the image given alone and in its folder gave two rows without a word (extract names such paths)
    assert f"1 path given twice or more (each row kept): {one_image}" in " ".join(output_text(result).split())


def test_cli_takes_the_models_precision_as_extract_does(fitted):
    """Review: Python's predict_images took precision=, the command had no --precision."""
    one_image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--precision", "bf16", one_image)
    said = output_text(result)
    assert result.exit_code == 0 and "Note: --precision bf16 is an autocast on CUDA; on cpu the backbone computes " \
        "in fp32." in said, said
    refused = run_cli("predict", "--run", fitted["run"], "--precision", "fp8", one_image)
    assert refused.exit_code == 2 and "'fp8' is not one of 'fp32', 'bf16', 'fp16'" in output_text(refused)


def test_json_lines_are_utf8_whatever_the_locale_says(fitted, tmp_path, monkeypatch):
    """bug: with an ASCII (or Latin-1) stdout, an image named in other letters ended --json in a traceback."""
    named = tmp_path / "ünï 猫.png"
    shutil.copy(fitted["photos"]["root"] / fitted["photos"]["good"][0], named)
    monkeypatch.setenv("PYTHONIOENCODING", "ascii")

    outcome = run_zsfs("predict", "--run", fitted["run"], "--workers", "0", "--json", named)

    assert outcome.returncode == 0 and not outcome.problems, outcome.output
    row = json.loads(next(line for line in outcome.output.splitlines() if line.startswith("{")))
    assert row["path"] == str(named) and row["error"] is None


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_a_full_disk_leaves_the_previous_predictions_file_whole(fitted, tmp_path, suffix):
    # a real failure: the child's writes fail past 300 bytes, as on a full disk
    out = tmp_path / f"predictions{suffix}"
    out.write_text("previous predictions\n")
    outcome = run_zsfs("predict", "--run", fitted["run"], "--workers", "0", "--out", out, fitted["photos"]["root"],
                       file_size_limit=300)

    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert f"({out})" in output_text(outcome), outcome.output  # the file the user named
    # bug: polars' csv and json writers fail with no errno: "[Errno None] None: ..."
    assert "the disk is full (or a file-size limit was reached)" in output_text(outcome), outcome.output
    assert out.read_text() == "previous predictions\n"
    assert [entry.name for entry in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_no_room_for_the_decoding_workers_state_says_so(fitted, tmp_path):
    """Review: with decoding workers and a file-size limit, predict failed on the workers' shared
    state (a file of /dev/shm) with "the disk is full", naming no file and no way round it."""
    outcome = run_zsfs("predict", "--run", fitted["run"], "--workers", "1", "--out", tmp_path / "p.csv",
                       fitted["photos"]["root"], file_size_limit=1)
    said = " ".join(output_text(outcome).split())
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert "shared memory (/dev/shm) is full, or over a file-size limit" in said and "--workers 0" in said, said
    assert list(tmp_path.iterdir()) == []


WRITE_TABLES_PAST_A_LIMIT = """
import resource, signal, sys
import numpy as np, polars as pl
from zsfs.outputs import write_table
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
frame = pl.DataFrame({"score": np.random.default_rng(0).random(300_000)})  # MBs in every format
for kind in ("csv", "parquet", "json"):
    try:
        write_table(frame, f"{sys.argv[1]}/t.{kind}", kind)
        print(kind, "written")
    except OSError as error:
        print(kind, error.errno)
"""


def test_a_table_cut_short_by_a_full_disk_raises_the_systems_error_in_every_format(tmp_path):
    """Past the file's buffer, polars' writers fail part-way: csv lost the errno ("[Errno None]"),
    parquet became a ComputeError, and json reported nothing (a cut file, "written")."""
    import errno

    result = subprocess.run([sys.executable, "-c", WRITE_TABLES_PAST_A_LIMIT, str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.split() == ["csv", str(errno.EFBIG), "parquet", str(errno.EFBIG), "json", str(errno.EFBIG)], \
        result


def test_a_read_only_predictions_file_is_kept_and_a_replaced_one_keeps_its_permissions(fitted, tmp_path, monkeypatch):
    """Bug: `chmod 444 p.csv` did not keep p.csv: the rename replaced it, and any file replaced came
    out with the umask's permissions instead of its own."""
    import zsfs.predict

    out = tmp_path / "p.csv"
    out.write_text("kept\n")
    out.chmod(0o444)
    embedded = []
    monkeypatch.setattr(zsfs.predict, "embedded_images", lambda *args, **kwargs: embedded.append(1) / 0)
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", out, fitted["photos"]["root"])
    said = " ".join(output_text(result).split())
    assert result.exit_code == 1 and f"cannot write the predictions file {out}: it is read-only, and zsfs does " \
        "not replace a read-only file; make it writable (chmod u+w) or choose another name" in said, said
    assert not embedded and out.read_text() == "kept\n"  # refused before any image was read
    monkeypatch.undo()
    out.chmod(0o640)
    assert run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", out,
                   fitted["photos"]["root"]).exit_code == 0
    assert out.read_text().startswith("path,") and (out.stat().st_mode & 0o777) == 0o640
    page = tmp_path / "page.html"  # the report's page, through the same writer
    page.write_text("kept")
    page.chmod(0o444)
    assert run_cli("report", fitted["run"], "--out", page).exit_code == 1 and page.read_text() == "kept"


def test_an_output_given_as_a_link_is_written_through_it(fitted, tmp_path):
    """Bug: `--out latest.csv`, a link to this run's file, replaced the link with a new file and
    left the file it named stale."""
    (tmp_path / "runs").mkdir()
    target, link = tmp_path / "runs" / "monday.csv", tmp_path / "latest.csv"
    target.write_text("stale\n")
    link.symlink_to(Path("runs") / "monday.csv")
    assert run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", link,
                   fitted["photos"]["root"]).exit_code == 0
    assert link.is_symlink() and target.read_text().startswith("path,")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["latest.csv", "monday.csv", "runs"]
    page, page_link = tmp_path / "runs" / "page.html", tmp_path / "page.html"
    page_link.symlink_to(page)  # not there yet: created where the link points
    assert run_cli("report", fitted["run"], "--out", page_link).exit_code == 0
    assert page_link.is_symlink() and page.read_text().startswith("<!DOCTYPE html>")

    # what a name is refused for, its link's file is refused for too; the format goes by the name given
    run_predictions = Path(fitted["run"]) / "predictions.parquet"
    before = run_predictions.read_bytes()
    for name, points_to, refused in (
            ("run.parquet", run_predictions, "is a file of the fit run in"),
            ("other.csv", tmp_path / "runs" / "other.json", "that file's name ends in another; give that file's own name"),
            ("store.html", fitted["store"], "its name must end in .html or .htm")):
        (tmp_path / name).symlink_to(points_to)
        command = ("report", fitted["run"]) if name.endswith(".html") else \
            ("predict", "--run", fitted["run"], "--workers", "0", fitted["photos"]["root"])
        result = run_cli(*command, "--out", tmp_path / name)
        said = " ".join(output_text(result).split())
        assert result.exit_code == 2 and f"{tmp_path / name} links to {points_to}; " in said and refused in said, said
    assert run_predictions.read_bytes() == before and not (tmp_path / "runs" / "other.json").exists()

    (tmp_path / "loop.csv").symlink_to("round.csv")
    (tmp_path / "round.csv").symlink_to("loop.csv")
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", tmp_path / "loop.csv",
                     fitted["photos"]["root"])
    assert result.exit_code == 2 and "is a link that leads back to itself" in " ".join(output_text(result).split())
    (tmp_path / "tables.csv").mkdir()
    (tmp_path / "folder.csv").symlink_to("tables.csv")  # the command line's --out refuses a folder itself
    with pytest.raises(ZsfsError, match=r"folder.csv is a folder \(.*tables.csv\); give a file name$"):
        write_predictions(fitted["fit"], tmp_path / "folder.csv")
    assert (tmp_path / "loop.csv").is_symlink() and (tmp_path / "folder.csv").is_symlink()


def test_an_output_named_by_a_pipe_is_refused_not_replaced(fitted, tmp_path):
    """Failure test: `--out ff.csv` naming a FIFO (mkfifo) replaced the pipe with a file, exit 0, and a
    reader waiting on the pipe never heard; a report's too."""
    for name, command in (("ff.csv", ("predict", "--run", fitted["run"], "--workers", "0", fitted["photos"]["root"])),
                          ("ff.html", ("report", fitted["run"]))):
        os.mkfifo(tmp_path / name)
        result = run_cli(*command, "--out", tmp_path / name)
        said = " ".join(output_text(result).split())
        assert result.exit_code == 2 and f"{tmp_path / name} is a named pipe, which zsfs would replace" in said, said
        assert stat.S_ISFIFO(os.stat(tmp_path / name).st_mode)


def test_an_output_linked_into_a_read_only_folder_is_refused_before_the_work(fitted, tmp_path):
    """Bug: the early check probed the link's folder, so the write into the file's own read-only
    folder failed only after every image was classified, naming a hidden temporary file."""
    from zsfs.testing.privileges import run_python_unprivileged

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "p.csv").write_text("kept\n")
    (kept / "p.csv").chmod(0o666)
    kept.chmod(0o555)
    (tmp_path / "p.csv").symlink_to(kept / "p.csv")
    child = run_python_unprivileged(
        "import zsfs.predict\nzsfs.predict.embedded_images = lambda *a, **k: 1 / 0  # no image may be read\n"
        "from zsfs.testing.cli import output_text, run_cli\n"
        f"print(output_text(run_cli('predict', '--run', {str(fitted['run'])!r}, '--workers', '0', "
        f"'--out', {str(tmp_path / 'p.csv')!r}, {str(fitted['photos']['root'])!r})))")
    said = " ".join(child.stdout.split())
    assert f"cannot write the predictions file {kept / 'p.csv'}: {kept} is not writable (Permission denied)" in said, \
        child
    assert (kept / "p.csv").read_text() == "kept\n"


def test_bad_inputs_are_clear_errors(fitted, tmp_path):
    with pytest.raises(ZsfsError, match="no-such-run does not exist"):
        predict_images(tmp_path / "no-such-run", [fitted["photos"]["root"]])
    with pytest.raises(ZsfsError, match="does not exist"):
        predict_images(fitted["run"], [tmp_path / "missing.jpg"])
    broken_run = tmp_path / "broken-run"
    shutil.copytree(fitted["run"], broken_run)
    (broken_run / "classifier.pt").write_bytes(b"not a classifier")
    with pytest.raises(ZsfsError, match="classifier"):
        predict_images(broken_run, [fitted["photos"]["root"]])

    result = run_cli("predict", "--run", tmp_path / "no-such-run", tmp_path)
    assert result.exit_code == 1
    assert "Error:" in result.output and "no-such-run does not exist" in output_text(result)


def test_list_files_are_read_as_extract_reads_them(fitted, tmp_path, monkeypatch):
    """Bug: a .txt list of images was taken for an image: one row "not an image", nothing
    classified. Lists come with --list (lists=); a .txt or .csv among the images gets a row saying
    it is a list (review: read as a list, `photos/*` with a labels.csv stopped the command)."""
    photos = fitted["photos"]
    chosen = photos["good"][:3]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "some.txt").write_text("# chosen\n" + "".join(f"{photos['root'] / p}\n" for p in chosen[:2]))
    (tmp_path / "lists" / "more.csv").write_text("path,label\n" + f"{photos['root'] / chosen[2]},x\n")
    shutil.copy(photos["root"] / chosen[0], tmp_path / "lists" / "near.png")
    (tmp_path / "lists" / "near.txt").write_text("near.png\n")  # relative to the list's folder
    (tmp_path / "linked.txt").symlink_to(tmp_path / "lists" / "near.txt")  # review: its target's folder, as extract
    monkeypatch.chdir(tmp_path)
    frame = predict_images(fitted["run"], lists=["lists/some.txt", "lists/more.csv", "lists/near.txt", "linked.txt"],
                           workers=0)
    assert frame["path"].to_list() == [str(photos["root"] / p) for p in chosen] + ["lists/near.png",
                                                                                  str(tmp_path / "lists" / "near.png")]
    assert frame["error"].is_null().all()
    alone = predict_images(fitted["run"], [photos["root"] / p for p in chosen], workers=0)
    assert_same_predictions(frame.head(3), alone)
    assert frame["predicted"][3] == frame["predicted"][4] == alone["predicted"][0]

    (tmp_path / "labels.csv").write_text("name,class\na,b\n")  # no 'path' column: not a list of images
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "lists/near.png", "labels.csv",
                     "--list", "lists/near.txt", "--out", "p.csv")
    assert result.exit_code == 0, result.output
    written = pl.read_csv(tmp_path / "p.csv")
    assert written["path"].to_list() == ["lists/near.png", "labels.csv", "lists/near.png"]
    assert written["error"].to_list()[1] == ("a list file, not an image (to classify the images it lists: zsfs "
                                              "predict --list FILE; lists=[FILE])")
    result = run_cli("predict", "--run", fitted["run"])
    assert result.exit_code == 2 and "give IMAGES (files, folders, tars) and/or --list FILE" in output_text(result)
    result = run_cli("predict", "--run", fitted["run"], "--list", "lists/near.png")
    assert result.exit_code == 1 and "a list of images must end in .txt" in output_text(result)


def test_a_lists_absolute_paths_are_named_as_the_list_writes_them_from_any_folder(fitted, tmp_path, monkeypatch):
    """Review: a list's absolute paths came back rewritten, by where the list and the working folder
    were (`/x/sub/x.png` as `sub/x.png`, `/x/sub/../imgs/a.png` as `sub/../imgs/a.png`, absolute again
    from `/`), so a script could not join the predictions back to its list."""
    image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    (tmp_path / "sub").mkdir()
    shutil.copy(image, tmp_path / "sub" / "x.png")
    (tmp_path / "imgs").mkdir()
    shutil.copy(image, tmp_path / "imgs" / "a.png")
    lines = [str(tmp_path / "sub" / "x.png"), f"{tmp_path}/sub/../imgs/a.png", f"{image.parent}//.{os.sep}{image.name}",
             "x.png"]  # (review: "//" and "/./" were normalised away)
    (tmp_path / "sub" / "abs.txt").write_text("\n".join(lines) + "\n")
    for folder, list_file in ((tmp_path, "sub/abs.txt"), (tmp_path / "sub", "abs.txt"), (Path("/"), tmp_path / "sub" /
                                                                                         "abs.txt")):
        monkeypatch.chdir(folder)
        frame = predict_images(fitted["run"], lists=[list_file], workers=0)
        relative = "x.png" if folder == tmp_path / "sub" else os.path.join(Path(list_file).parent, "x.png")
        assert frame["path"].to_list() == lines[:3] + [relative], folder
        assert frame["error"].is_null().all() and frame["predicted"].n_unique() == 1


def test_a_list_named_as_the_output_is_refused_not_replaced(fitted, tmp_path):
    """Review: `predict --list todo.csv --out todo.csv` replaced the user's list with the predictions
    (exit 0); extract and import refuse an input as their output, and so does predict now."""
    image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    todo = tmp_path / "todo.csv"
    todo.write_text(f"path\n{image}\n")
    (tmp_path / "linked.csv").symlink_to(todo)
    for out in (todo, tmp_path / "linked.csv"):  # by any name
        result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--list", str(todo), "--out", str(out))
        assert result.exit_code == 1 and (f"{out} is the image list this command reads, not a place for the "
                                          "predictions file it writes; give the predictions file another name "
                                          f"(e.g. {out.stem}-predictions.csv)") in output_text(result), result.output
    assert todo.read_text() == f"path\n{image}\n"


def test_a_pipe_or_device_given_by_name_gets_a_row_saying_why(fitted, tmp_path):
    """Bug: a FIFO or /dev/null given by name was "does not exist"; inside a folder it got a row."""
    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    frame = predict_images(fitted["run"], [fifo, "/dev/null", image], workers=0)
    assert frame["path"].to_list() == [str(fifo), "/dev/null", str(image)]
    assert frame["error"].to_list() == ["not a regular file", "not a regular file", None]


def test_two_names_that_read_alike_are_not_called_one_file_given_twice(fitted, tmp_path):
    """Bug: 'bad<0xff>.jpg' and a file literally named 'bad\\xff.jpg' print alike (a name's
    undecodable byte is written \\xff), and predict said one path was given twice."""
    folder = tmp_path / "h"
    folder.mkdir()
    image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    shutil.copy(image, os.fsdecode(bytes(folder) + b"/bad\xff.jpg"))
    shutil.copy(image, folder / "bad\\xff.jpg")
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", folder)
    assert result.exit_code == 0, result.output
    assert "given twice" not in output_text(result) and "2 images classified" in output_text(result)
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", folder, os.fsdecode(bytes(folder) + b"/bad\xff.jpg"))
    assert "1 path given twice or more (each row kept)" in output_text(result), result.output
    # review: only the same spelling was seen; an absolute and a relative name, or a link, are one file too
    (tmp_path / "linked.jpg").symlink_to(image)
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", folder / "bad\\xff.jpg",
                     os.path.relpath(folder / "bad\\xff.jpg"), image, tmp_path / "linked.jpg")
    assert result.exit_code == 0, result.output
    assert f"2 paths given twice or more (each row kept): {folder}/bad\\xff.jpg; {image}" in " ".join(
        output_text(result).split()), result.output
    # review: two hard links in one folder are two files to the user (cp -al trees), not one given twice
    os.link(folder / "bad\\xff.jpg", folder / "hard.jpg")
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", folder)
    assert result.exit_code == 0 and "given twice" not in output_text(result), result.output


def test_an_output_name_as_long_as_the_file_system_takes_is_written(fitted, tmp_path):
    """Bug: a 240-byte name was refused: the temporary file beside it held the whole name, plus
    the process id and host, past 255 bytes."""
    image = fitted["photos"]["root"] / fitted["photos"]["good"][0]
    out = tmp_path / ("x" * 251 + ".csv")
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", image, "--out", out)
    assert result.exit_code == 0, result.output
    assert pl.read_csv(out)["path"].to_list() == [str(image)]
    assert sorted(path.name for path in tmp_path.iterdir()) == [out.name]


def test_cli_without_out_says_how_to_get_the_rows_the_table_leaves_out(fitted):
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", fitted["photos"]["root"])
    assert result.exit_code == 0, result.output
    text = output_text(result)
    n_rows = predict_images(fitted["run"], [fitted["photos"]["root"]], workers=0).height
    assert n_rows > 20 and f"(first 20 of {n_rows})" in text
    assert "the table shows the first 20: --out FILE (.csv, .parquet, .json) or --json gives every row" in text


def test_output_suffixes_in_capitals_are_the_same_formats(fitted, tmp_path):
    out = tmp_path / "P.CSV"
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", out, fitted["photos"]["root"])
    assert result.exit_code == 0, result.output
    assert pl.read_csv(out).height == predict_images(fitted["run"], [fitted["photos"]["root"]], workers=0).height


def test_predict_rejects_an_unknown_output_format(fitted, tmp_path):
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "--out", tmp_path / "p.xlsx",
                     fitted["photos"]["root"])
    assert result.exit_code == 2  # a usage error, found before any image is embedded
    assert "Invalid value for '--out'" in result.output
    assert "cannot write predictions to 'p.xlsx': its name must end in one of .csv, .parquet, .json" in result.output
    assert not (tmp_path / "p.xlsx").exists()
    # review: `--out .csv` was told to end in .csv: the name is a hidden file's, with no suffix
    result = run_cli("predict", "--run", fitted["run"], "--out", tmp_path / ".csv", fitted["photos"]["root"])
    assert result.exit_code == 2 and "cannot write predictions to '.csv': its name must end in one of .csv, .parquet, " \
        ".json, after a name (.csv alone names a hidden file with no suffix)" in output_text(result), result.output
    result = run_cli("report", fitted["run"], "--out", tmp_path / ".HTML")
    assert result.exit_code == 2 and "cannot write the report to '.HTML': its name must end in .html or .htm, after a " \
        "name (.HTML alone names a hidden file with no suffix)" in output_text(result), result.output


@pytest.mark.parametrize("name", ["predictions.parquet", "config.json", "metrics.json"])
def test_predict_refuses_to_write_over_the_runs_own_files(fitted, tmp_path, name):
    """Bug: --out runs/x/predictions.parquet replaced the fit's predictions (and config.json the
    run's config), and the run's report then showed the new images as the fit's."""
    import shutil

    run = shutil.copytree(fitted["run"], tmp_path / "run")
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = run_cli("predict", "--run", run, "--workers", "0", "--out", run / name, fitted["photos"]["root"])
    assert result.exit_code == 2, result.output
    assert f"is a file of the fit run in {run}" in " ".join(result.output.split())
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    result = run_cli("predict", "--run", run, "--workers", "0", "--out", tmp_path / name, fitted["photos"]["root"])
    assert result.exit_code == 0 and (tmp_path / name).is_file(), result.output  # elsewhere, the same name is fine


def test_backbone_weights_file_is_found_moved_or_refused(fitted, tmp_path):
    """A run whose backbone came from a file: moved file -> clear error; new location -> same output."""
    import dataclasses

    import torch

    from zsfs.fit.classifier import load_classifier
    from zsfs.models import load_backbone, load_backbone_from_record
    from zsfs.testing.models import TINY_BACKBONE

    run = tmp_path / "run"
    shutil.copytree(fitted["run"], run)
    weights = tmp_path / "backbone.pt"
    classifier = load_classifier(run)
    original = load_backbone_from_record(classifier.backbone)
    torch.save(original.model.state_dict(), weights)
    record = load_backbone(TINY_BACKBONE, str(weights)).record
    dataclasses.replace(classifier, backbone=record).save(run / "classifier.pt")
    images = [fitted["photos"]["root"]]
    expected = predict_images(fitted["run"], images, workers=0)

    assert predict_images(run, images, workers=0).equals(expected)
    moved = weights.rename(tmp_path / "moved.pt")
    with pytest.raises(ZsfsError, match="--backbone-weights"):
        predict_images(run, images, workers=0)
    assert predict_images(run, images, workers=0, backbone_weights=moved).equals(expected)
    other = tmp_path / "other.pt"
    torch.save({name: value + 1 for name, value in original.model.state_dict().items()}, other)
    with pytest.raises(ZsfsError, match="not the one the store was built with"):
        predict_images(run, images, workers=0, backbone_weights=other)
    # Bug: a mistyped new location was called "the file that the store was built with"
    with pytest.raises(ZsfsError, match=r"backbone weights file .*typo\.pt not found; check the --backbone-weights"):
        predict_images(run, images, workers=0, backbone_weights=tmp_path / "typo.pt")


def test_backbone_weights_for_a_run_without_a_weights_file_are_refused(fitted, tmp_path):
    """Bug: ignored silently for a backbone whose weights were not a file ('random' here)."""
    with pytest.raises(ZsfsError, match="store was built with weights 'random', not a file; drop --backbone-weights"):
        predict_images(fitted["run"], [fitted["photos"]["root"]], workers=0, backbone_weights=tmp_path / "x.pt")


def test_a_run_on_an_imported_store_explains_why_it_cannot_predict(fitted, tmp_path):
    """Bug: an imported store's backbone ('imported' weights) gave a misleading unknown-weights error."""
    import dataclasses

    from zsfs.fit.classifier import load_classifier
    from zsfs.store.schema import IMPORTED_WEIGHTS

    run = tmp_path / "run"
    shutil.copytree(fitted["run"], run)
    classifier = load_classifier(run)
    imported = {"name": "my-vit", "weights": IMPORTED_WEIGHTS, "file": None, "sha256": None, "dim": 64}
    dataclasses.replace(classifier, backbone=imported).save(run / "classifier.pt")
    with pytest.raises(ZsfsError, match=r"imported.*'my-vit'.*classify their features in Python with "
                                        r"`zsfs\.load_run\(RUN_DIR\)\.predict\(features\)`"):
        predict_images(run, [fitted["photos"]["root"]], workers=0)
    with pytest.raises(ZsfsError, match="imported"):  # said before the inputs are listed (a missing one here)
        predict_images(run, [tmp_path / "missing.jpg"], workers=0)


def test_tar_members_are_read_back_as_a_store_records_them(fitted, tmp_path, monkeypatch):
    from zsfs.testing.tars import files_as_samples, write_tar_shards

    photos = fitted["photos"]
    good = photos["good"][:5]
    monkeypatch.chdir(tmp_path)
    members = write_tar_shards("shards", files_as_samples(photos["root"], good), per_tar=3)
    recorded = [f"shards/{path}" for path in members]  # the path under the store's source root

    from_members = predict_images(fitted["run"], recorded, workers=0)
    from_tars = predict_images(fitted["run"], [Path("shards/00000.tar"), Path("shards/00001.tar")], workers=1)
    from_files = predict_images(fitted["run"], [photos["root"] / path for path in good], workers=0)
    assert from_members["path"].to_list() == from_tars["path"].to_list() == recorded
    # bug: extract reads a brace pattern of tars, predict said it "does not exist"
    from_pattern = predict_images(fitted["run"], ["shards/{00000..00001}.tar"], workers=0)
    assert from_pattern["path"].to_list() == recorded
    monkeypatch.chdir(tmp_path / "shards")  # a tar in the working folder: its members as "00000.tar::x", no "./"
    here = predict_images(fitted["run"], ["00000.tar"], workers=0)
    assert here["path"].to_list() == [path for path in members if path.startswith("00000.tar::")]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZsfsError, match=r"1 of 3 tar files does not exist \(first: shards/00002.tar\)"):
        predict_images(fitted["run"], ["shards/{00000..00002}.tar"], workers=0)
    with pytest.raises(ZsfsError, match=r"^shards/00009.tar does not exist; pass image files"):
        predict_images(fitted["run"], ["shards/00009.tar"], workers=0)
    # each tar under the name the pattern gives it, wherever a link leads (review: the paths were
    # made relative to the folder the links resolve to, and named no file)
    Path("elsewhere").mkdir()
    Path("shards/00001.tar").rename("elsewhere/00001.tar")
    Path("shards/00001.tar").symlink_to(Path("../elsewhere/00001.tar"))
    linked = predict_images(fitted["run"], ["shards/{00000..00001}.tar"], workers=0)
    assert linked["path"].to_list() == recorded and linked["error"].null_count() == len(good)
    assert predict_images(fitted["run"], [f"{tmp_path}/{{shards,elsewhere}}/00001.tar"], workers=0)["path"].to_list() \
        == [f"{tmp_path}/{folder}/00001.tar::{member.split('::')[1]}" for folder in ("shards", "elsewhere")
            for member in members if member.startswith("00001.tar")]
    assert from_members["error"].null_count() == len(good)
    for other in (from_tars, from_files):  # the tars read with a decoding process: torch has a core less
        assert_same_predictions(from_members.drop("path"), other.drop("path"))

    with pytest.raises(ZsfsError, match="holds no file named 'nope.jpg'"):
        predict_images(fitted["run"], ["shards/00000.tar::nope.jpg"], workers=0)
    # bug: a real file so named (extract embeds it) was taken for a member of shards/x.tar, "which does not exist"
    named_like_a_member = Path("shards/x.tar::y.jpg")
    shutil.copy(photos["root"] / good[0], named_like_a_member)
    as_file = predict_images(fitted["run"], [named_like_a_member], workers=0)
    assert as_file["path"].to_list() == [str(named_like_a_member)] and as_file["error"].null_count() == 1
    assert_same_predictions(as_file.drop("path"), from_files.drop("path")[:1])
    # walkthrough: a stored member a//b.jpg or d/./e.jpg, given back, was made a/b.jpg ("holds no file named")
    with tarfile.open("odd.tar", "w") as archive:
        for name in ("a//b.jpg", "d/./e.jpg"):
            archive.add(photos["root"] / good[0], arcname=name)
    odd = predict_images(fitted["run"], ["odd.tar::a//b.jpg", "odd.tar::d/./e.jpg"], workers=0)
    assert odd["path"].to_list() == ["odd.tar::a//b.jpg", "odd.tar::d/./e.jpg"] and odd["error"].null_count() == 2
    result = run_cli("predict", "--run", fitted["run"], "--workers", "0", "odd.tar::a//b.jpg", "--json")
    assert result.exit_code == 0, result.output  # review: click made it a Path, a/b.jpg, before predict saw it
    assert json.loads(result.stdout)["path"] == "odd.tar::a//b.jpg"
    # walkthrough: a tar whose own name holds "::" was split at its first ".tar::" (predict: "x.tar does not
    # exist"; the report: none of its images found)
    shutil.copy("odd.tar", "x.tar::odd.tar")
    named = predict_images(fitted["run"], ["x.tar::odd.tar::a//b.jpg"], workers=0)
    assert named["error"].null_count() == 1
    assert locate_members(["x.tar::odd.tar::d/./e.jpg"], tmp_path).tars == (tmp_path / "x.tar::odd.tar",)
    Path("img.tar::2024").mkdir()  # review: a folder so named was taken for a member of img.tar
    shutil.copy(photos["root"] / good[0], "img.tar::2024/a.png")
    assert predict_images(fitted["run"], ["img.tar::2024"], workers=0)["error"].to_list() == [None]


def test_images_of_formats_zsfs_cannot_read_get_a_row_saying_so(fitted, tmp_path):
    """Walkthrough: a folder given to predict with DICOM slices beside its PNGs gave the PNGs' rows and
    nothing of the .dcm files (extract's summary counts them); each now has a row with the reason a
    .dcm file named alone gets."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(fitted["photos"]["root"] / fitted["photos"]["good"][0], folder / "a.png")
    (folder / "slice.DCM").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    frame = predict_images(fitted["run"], [folder], workers=0)
    reason = "a .dcm file, a format zsfs cannot read: convert it (to JPEG or PNG)"
    assert frame["path"].to_list() == [str(folder / "a.png"), str(folder / "slice.DCM")]
    assert frame["error"].to_list() == [None, reason]
    alone = predict_images(fitted["run"], [folder / "slice.DCM"], workers=0)
    assert alone["error"].to_list() == [reason]


def test_a_tar_still_being_written_is_its_own_row_and_the_other_images_are_classified(fitted, tmp_path, monkeypatch):
    """Nightly predict: one tar of the night's folder still being copied in (it ends inside a member)
    ended the whole command with "not a readable tar"; the other tars and images got no prediction."""
    from zsfs.testing.tars import files_as_samples, write_tar_shards

    photos = fitted["photos"]
    monkeypatch.chdir(tmp_path)
    members = write_tar_shards("night", files_as_samples(photos["root"], photos["good"][:6]), per_tar=3)
    whole = Path("night/00001.tar").read_bytes()
    Path("night/00001.tar").write_bytes(whole[:len(whole) // 2])  # as a copy caught halfway
    read = [f"night/{path}" for path in members if path.startswith("00000.tar::")]
    for given in (["night"], ["night/{00000..00001}.tar"], ["night/00000.tar", "night/00001.tar"]):
        frame = predict_images(fitted["run"], [*given, photos["root"] / photos["good"][0]], workers=0)
        assert frame["path"].to_list() == [*read, "night/00001.tar", str(photos["root"] / photos["good"][0])], given
        error = frame["error"].to_list()
        assert error[:3] == [None] * 3 and error[4] is None and frame["predicted"].null_count() == 1
        assert error[3].startswith("not a readable tar, or damaged after ") and "the file ends inside the member" \
            in error[3], error[3]
    outcome = run_cli("predict", "--run", fitted["run"], "night", "--json")
    assert outcome.exit_code == 0 and "3 images classified" in output_text(outcome), output_text(outcome)
    for tar in ("00000.tar", "00001.tar"):
        Path(f"night/{tar}").write_bytes(b"\0" * 100)  # nothing read: as when no file can be read, exit 1
    outcome = run_cli("predict", "--run", fitted["run"], "night")
    assert outcome.exit_code == 1 and "Traceback" not in output_text(outcome), output_text(outcome)


def test_predict_reads_the_tar_members_a_list_names(fitted, tmp_path, monkeypatch):
    """Walkthrough: a list's ``shard.tar::member`` line was skipped as extract skips it, and, the
    reason being kept by name, so was that member given through its tar: both rows had the list's
    error. Predict reads members (its own rows are so named): every row is classified."""
    from zsfs.testing.tars import files_as_samples, write_tar_shards

    monkeypatch.chdir(tmp_path)
    members = write_tar_shards("shards", files_as_samples(fitted["photos"]["root"], fitted["photos"]["good"][:2]),
                               per_tar=2)
    member = f"shards/{members[0]}"
    Path("list.txt").write_text(f"{member}\n")
    listed = image_inputs(["shards/00000.tar"], lists=["list.txt"])
    assert listed.unreadable == {} and listed.paths == [member, f"shards/{members[1]}", member]
    frame = predict_images(fitted["run"], ["shards/00000.tar"], lists=["list.txt"], workers=0)
    assert frame["path"].to_list() == listed.paths and frame["error"].null_count() == 3
    assert frame["predicted"][0] == frame["predicted"][2]
    # review: a stale line (a member the tar does not hold) stopped the command, with no row at all
    Path("list.txt").write_text(f"{member}\nshards/00000.tar::nope.jpg\n")
    frame = predict_images(fitted["run"], [], lists=["list.txt"], workers=0)
    assert frame["error"].to_list() == [None, "shards/00000.tar holds no file named 'nope.jpg'"]
    with pytest.raises(ZsfsError, match="holds no file named 'nope.jpg'"):  # given on the command line: an error
        predict_images(fitted["run"], ["shards/00000.tar::nope.jpg"], workers=0)


def test_on_cpu_the_model_threads_follow_extracts_rule(fitted, monkeypatch):
    """Bug: predict set up its own loader and left out extract's thread rule (then: the cores the
    decoding workers leave; now every core, the workers at a lower priority). Both now run the
    one pipeline, `embedding.embedded_listing`."""
    import torch

    from zsfs.embedding import available_cores
    from zsfs.models import Backbone

    threads_seen = []
    encode = Backbone.encode_images

    def recording(self, pixels):
        threads_seen.append(torch.get_num_threads())
        return encode(self, pixels)

    monkeypatch.setattr(Backbone, "encode_images", recording)
    torch.set_num_threads(1)
    predict_images(fitted["run"], [fitted["photos"]["root"]], workers=1, batch_size=4)
    assert threads_seen and set(threads_seen) == {available_cores()}
    assert torch.get_num_threads() == 1  # the caller's setting is back
    torch.set_num_threads(available_cores())


FORKED_PREDICT = """
import sys, zsfs
run_dir, photos = sys.argv[1], sys.argv[2]
run = zsfs.load_run(run_dir)
mine = run.predict_images([photos], workers=0)  # polars' pool runs in this parent
def child(queue):
    theirs = run.predict_images([photos], workers=0)
    columns = run.read_predictions(["predicted", "confidence"])
    queue.put([theirs.equals(mine), columns.columns, str(theirs.schema["confidence"])])
"""


def test_images_are_predicted_in_a_child_forked_after_polars_ran_and_scores_keep_their_float32(fitted):
    """Review: predict_images put its table together with polars' with_columns and select, which wait
    for ever on a pool a forked child does not have (the docs say such a child predicts); and the
    scores had become Float64, so a CSV of them read 0.30000001192092896."""
    exitcode, said, stderr = run_forked_child(FORKED_PREDICT, str(fitted["run"]), str(fitted["photos"]["root"]))
    assert exitcode == 0 and said == [True, ["predicted", "confidence"], "Float32"], stderr[-2000:]
    assert fitted["fit"].schema["confidence"] == pl.Float32


def test_on_a_narrow_terminal_the_figures_give_way_to_the_path_and_its_label(capsys, monkeypatch):
    """Walkthrough: at 50 columns predict's path column was one character wide and the label's none."""
    from zsfs.cli.console import console
    from zsfs.cli.predict import _table

    monkeypatch.setattr(console, "_width", 50)
    frame = pl.DataFrame({"path": ["photos/cat/0001.jpg"], "predicted": ["tabby cat"], "confidence": [0.5],
                          "ood_distance": [0.25], "ood_distance_flag": [False], "ood_paper": [0.0], "error": [None]})
    console.print(_table(frame))
    rows = [line for line in capsys.readouterr().err.splitlines() if line.startswith("│")]
    cells = "".join(row.split("│")[1].strip() for row in rows), "".join(row.split("│")[2].strip() for row in rows)
    assert cells == ("photos/cat/0001.jpg", "tabby cat"), rows
