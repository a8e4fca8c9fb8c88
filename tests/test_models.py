"""Model loading (tag | file | random), records, preprocessing, encoding, and every load error."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

from zsfs.digests import unchanged_file_sha256
from zsfs.errors import ModelLoadError
from zsfs.models import (
    by_name_only,
    encode_vocabulary,
    keeps_clip_head,
    load_backbone,
    load_backbone_from_record,
    load_clip,
    load_clip_from_record,
    same_text_to_clip,
    within_aspect_ratio,
    worker_transform,
)
from zsfs.models.encoders import MAX_ASPECT_RATIO
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.testing.models import TINY_BACKBONE, TINY_CLIP_CONFIG, cache_default_backbone_weights
from zsfs.testing.privileges import run_python_unprivileged

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]


def pixels_for(model, n: int = 3) -> torch.Tensor:
    images = [Image.new("RGB", (40 + 8 * i, 30), (60 * i, 100, 200 - 50 * i)) for i in range(n)]
    return torch.stack([model.preprocess(image) for image in images])


def assert_normalised(embeddings: torch.Tensor | np.ndarray, shape: tuple) -> None:
    embeddings = torch.as_tensor(embeddings)
    assert embeddings.shape == shape and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(shape[0]))


def test_prompts():
    assert SINGLE_PROMPT.format("cat") == "a photo of a cat"
    assert len(ENSEMBLE_TEMPLATES) == len(set(ENSEMBLE_TEMPLATES)) == 80
    assert all(template.count("{}") == 1 for template in ENSEMBLE_TEMPLATES)
    assert "itap of a {}." in ENSEMBLE_TEMPLATES and "a photo of a {}." in ENSEMBLE_TEMPLATES
    # The paper's 80 templates word for word: an edited one changes every ensemble vocabulary, unseen.
    assert hashlib.sha256("\n".join(ENSEMBLE_TEMPLATES).encode()).hexdigest() == \
        "4f976686fb651bb5803d4689dcd849f75efe0ef19a3c801355bc9a6f03c8a5af"


# --- CLIP ----------------------------------------------------------------------------------------


def test_tiny_clip_record_and_preprocessing(tiny_clip):
    record = tiny_clip.record
    assert record["name"] == "zsfs-tiny-clip" and record["weights"] == "random"
    assert record["file"] is None and record["sha256"] is None
    assert record["dim"] == 32 and record["image_size"] == [32, 32]
    assert record["mean"] == pytest.approx(OPENAI_MEAN)
    assert (record["interpolation"], record["crop"]) == ("bicubic", "center")
    assert json.loads(json.dumps(record)) == record  # stored as JSON in the store
    assert tiny_clip.preprocess(Image.new("RGB", (50, 20))).shape == (3, 32, 32)


def test_clip_encodes_images_and_texts_normalised(tiny_clip):
    assert_normalised(tiny_clip.encode_images(pixels_for(tiny_clip)), (3, 32))
    texts = ["a cat", "a dog", "a photo of a truck", "x"]
    batched = tiny_clip.encode_texts(texts, batch_size=3)
    assert_normalised(batched, (4, 32))
    torch.testing.assert_close(batched, tiny_clip.encode_texts(texts, batch_size=256))
    assert not torch.allclose(batched[0], batched[1])


def test_vocabulary_single_and_ensemble(tiny_clip, monkeypatch):
    classes = ["cat", "dog", "traffic light"]
    calls = []
    encode_text = tiny_clip.model.encode_text
    monkeypatch.setattr(tiny_clip.model, "encode_text", lambda tokens: calls.append(len(tokens)) or encode_text(tokens))
    progress = []
    single, ensemble = encode_vocabulary(tiny_clip, classes, on_classes=progress.append)
    assert calls == [243] and progress == [3]  # one batch: 3 single prompts and 3 x 80 templates
    assert_normalised(single, (3, 32))
    assert_normalised(ensemble, (3, 32))
    assert isinstance(single, np.ndarray) and not np.allclose(single, ensemble, atol=1e-3)
    np.testing.assert_allclose(single[2], tiny_clip.encode_texts([SINGLE_PROMPT.format("traffic light")])[0], atol=1e-5)
    per_template = tiny_clip.encode_texts([t.format("dog") for t in ENSEMBLE_TEMPLATES])
    mean = per_template.mean(dim=0)
    np.testing.assert_allclose(ensemble[1], (mean / mean.norm()).numpy(), atol=1e-5)


def library_transforms(tiny_clip, tiny_backbone) -> list:
    """(model, the eval transform its library makes: resize, crop, (Maybe)ToTensor, Normalize)."""
    import open_clip
    import timm

    return [(tiny_clip, open_clip.image_transform(32, is_train=False, mean=OPENAI_MEAN, std=tiny_clip.record["std"])),
            (tiny_backbone, timm.data.create_transform(**timm.data.resolve_data_config(model=tiny_backbone.model)))]


def test_workers_hand_over_uint8_pixels_and_the_model_side_scales_them_as_the_full_transform(tiny_clip,
                                                                                            tiny_backbone):
    import open_clip

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 41, 3), dtype=np.uint8)) for i in range(3)]
    for model, full in library_transforms(tiny_clip, tiny_backbone):
        handed_over = torch.stack([model.preprocess(image) for image in images])
        assert handed_over.dtype == torch.uint8  # a quarter of float32's bytes through shared memory
        expected = torch.stack([full(image) for image in images])
        assert torch.equal(model.scaling(handed_over), expected)  # the same numbers, bit for bit
        with pytest.raises(TypeError, match="expected uint8 pixels"):
            model.encode_images(expected)  # one way in: what preprocess gives
    shapeless = transforms.Compose([transforms.ToTensor()])  # no Normalize at the end: kept whole
    assert worker_transform(shapeless) == (shapeless, None)
    squash = open_clip.image_transform(32, is_train=False, resize_mode="squash")  # resizes to 32 x 32 at once
    kept, scaling = worker_transform(squash)
    assert within_aspect_ratio not in kept.transforms and scaling is not None


def test_models_see_the_same_central_square_of_a_very_thin_image(tiny_clip, tiny_backbone):
    """Bug: a 1 x 20,000 strip was scaled to 168 x 3,360,000 pixels before the centre crop (2.9 GB)."""
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (12, 12 * 40, 3), dtype=np.uint8))
    cropped = within_aspect_ratio(strip)
    assert cropped.size == (12 * MAX_ASPECT_RATIO, 12)
    assert (np.asarray(cropped) == np.asarray(strip)[:, 12 * 12 : 12 * 28]).all()  # the middle
    assert within_aspect_ratio(strip.transpose(Image.Transpose.TRANSPOSE)).size == (12, 12 * MAX_ASPECT_RATIO)
    assert within_aspect_ratio(Image.new("RGB", (1, 20_000))).size == (1, MAX_ASPECT_RATIO)
    ordinary = Image.new("RGB", (160, 10))
    assert within_aspect_ratio(ordinary) is ordinary
    odd = Image.fromarray(rng.integers(0, 256, (12, 12 * 40 + 1, 3), dtype=np.uint8))  # an odd margin to cut
    for model, full in library_transforms(tiny_clip, tiny_backbone):
        assert model.preprocess.transforms[0] is within_aspect_ratio  # shortest side, centre crop: cut first
        for image, tolerance in ((strip, 1e-5), (odd, 0.05)):  # odd: the resized width rounds otherwise
            seen = model.scaling(model.preprocess(image)[None])[0]
            torch.testing.assert_close(seen, full(image), atol=tolerance, rtol=0)  # what the whole image gives
    import timm

    wide_input = timm.data.create_transform(input_size=(3, 32, 64), crop_pct=0.9)  # ResizeKeepRatio + CenterCrop
    kept, scaling = worker_transform(wide_input)
    assert kept.transforms[0] is within_aspect_ratio
    torch.testing.assert_close(scaling(kept(strip)[None])[0], wide_input(strip), atol=1e-5, rtol=0)


def test_class_names_clip_reads_as_the_same_text(tiny_clip):
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    classes = ["Cat", "dog", "cat", composed, "CAT", decomposed, "bird"]
    assert same_text_to_clip(tiny_clip.tokenizer, classes) == [("Cat", "cat"), ("Cat", "CAT"), (composed, decomposed)]
    single, _ = encode_vocabulary(tiny_clip, ["Cat", "cat"])
    np.testing.assert_array_equal(single[0], single[1])  # why they are refused: one embedding for two classes
    assert same_text_to_clip(tiny_clip.tokenizer, ["cat", "cats", "a cat"]) == [] and same_text_to_clip(tiny_clip.tokenizer, ["x"]) == []


def test_vocabulary_goes_through_in_blocks_of_classes(tiny_clip, monkeypatch):
    classes = [f"class {i}" for i in range(7)]
    calls = []
    encode_text = tiny_clip.model.encode_text
    monkeypatch.setattr(tiny_clip.model, "encode_text", lambda tokens: calls.append(len(tokens)) or encode_text(tokens))
    progress = []
    single, ensemble = encode_vocabulary(tiny_clip, classes, on_classes=progress.append)
    assert calls == [243, 243, 81] and progress == [3, 3, 1]  # 81 prompts per class, batches of <= 256
    whole_single, whole_ensemble = encode_vocabulary(tiny_clip, classes, batch_size=10_000)
    np.testing.assert_allclose(single, whole_single, atol=1e-5)
    np.testing.assert_allclose(ensemble, whole_ensemble, atol=1e-5)


def test_random_clip_is_reproducible_and_leaves_the_global_rng_alone(tiny_clip):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = load_clip(str(TINY_CLIP_CONFIG), "random")
    assert torch.equal(torch.rand(3), expected_next)
    assert again.record == tiny_clip.record
    x = pixels_for(tiny_clip)
    assert torch.equal(again.encode_images(x), tiny_clip.encode_images(x))


def test_loading_clip_leaves_a_bare_root_logger_bare(monkeypatch):
    """Bug: open_clip's module-level logging.info() gave the root logger a stderr handler (as
    logging.basicConfig does), so a notebook's own basicConfig(level=INFO) afterwards did nothing."""
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh interpreter (pytest adds its own)
    load_clip(str(TINY_CLIP_CONFIG), "random")
    assert logging.root.handlers == []


def test_clip_checkpoint_file_round_trip(tiny_clip, tmp_path):
    file = tmp_path / "clip.pt"
    torch.save(tiny_clip.model.state_dict(), file)
    loaded = load_clip(str(TINY_CLIP_CONFIG), str(file))
    assert loaded.record["weights"] == "file" and loaded.record["file"] == os.path.abspath(file)
    assert loaded.record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    x = pixels_for(tiny_clip)
    assert torch.equal(loaded.encode_images(x), tiny_clip.encode_images(x))
    assert torch.equal(loaded.encode_texts(["a cat"]), tiny_clip.encode_texts(["a cat"]))
    reloaded = load_clip_from_record(json.loads(json.dumps(loaded.record)))
    assert reloaded.record == loaded.record
    assert torch.equal(reloaded.encode_images(x), tiny_clip.encode_images(x))


def test_clip_from_record_needs_the_same_file_or_init(tiny_clip, tmp_path):
    file = tmp_path / "clip.pt"
    torch.save(tiny_clip.model.state_dict(), file)
    record = load_clip(str(TINY_CLIP_CONFIG), str(file)).record
    assert torch.equal(load_clip_from_record(tiny_clip.record).encode_texts(["x"]), tiny_clip.encode_texts(["x"]))
    file.write_bytes(file.read_bytes() + b"\0")
    now = hashlib.sha256(file.read_bytes()).hexdigest()
    with pytest.raises(ModelLoadError, match=f"not the one the store was built with \\(its sha256 is {now[:16]}\\.\\.\\., "
                                             f"the store's {record['sha256'][:16]}\\.\\.\\.\\); pass the original file"):
        load_clip_from_record(record)
    file.unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        load_clip_from_record(record)
    with pytest.raises(ModelLoadError, match="initialises it differently"):
        load_clip_from_record({**tiny_clip.record, "init_fingerprint": "0" * 64})


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("ViT-B-23", "openai", r"unknown CLIP model 'ViT-B-23' \(close names: ViT-B-32"),
        ("ViT-B/32", "nope", r"neither a pretrained tag of CLIP ViT-B-32 .*Tags: openai"),
        (str(TINY_CLIP_CONFIG), "/no/such/clip.pt", "CLIP weights file /no/such/clip.pt not found"),
        (str(TINY_CLIP_CONFIG), "missing.safetensors", "missing.safetensors not found"),
        ("/no/such/config.json", "random", "config file /no/such/config.json not found"),
    ],
)
def test_clip_name_and_weights_errors(name, weights, message):
    with pytest.raises(ModelLoadError, match=message):
        load_clip(name, weights)


def test_clip_file_that_does_not_fit_or_is_not_a_checkpoint(tiny_backbone, tmp_path):
    other = tmp_path / "backbone.safetensors"
    save_file(tiny_backbone.model.state_dict(), str(other))
    with pytest.raises(ModelLoadError, match="does not fit the CLIP architecture zsfs-tiny-clip") as refused:
        load_clip(str(TINY_CLIP_CONFIG), str(other))
    # a user with both files, named alike, swapped them and was told to check --clip-model
    assert str(refused.value).endswith('"... It holds no text tower, so it is no CLIP checkpoint: an image model\'s '
                                       'weights (for --backbone-weights?).'), refused  # (it read "....": review)
    torch.save(load_clip(str(TINY_CLIP_CONFIG), "random").model.state_dict(), tmp_path / "tiny-clip.pt")
    with pytest.raises(ModelLoadError, match="does not fit the CLIP architecture ViT-B-32") as refused:  # a CLIP's
        load_clip("ViT-B-32", str(tmp_path / "tiny-clip.pt"))
    assert str(refused.value).endswith(" Check that --clip-model matches the checkpoint."), refused
    # bug: each of these was blamed on the architecture ("does not fit ... KeyError: 101", "EOFError", ...)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"cannot read .*notes.pt as a checkpoint \(its content is no tensors"):
        load_clip(str(TINY_CLIP_CONFIG), str(tmp_path / "notes.pt"))
    torch.save(tiny_backbone.model, tmp_path / "whole.pt")  # the model object, not its state_dict
    with pytest.raises(ModelLoadError, match=r"whole.pt as a checkpoint \(a pickled Python object"):
        load_clip(str(TINY_CLIP_CONFIG), str(tmp_path / "whole.pt"))
    with pytest.warns(FutureWarning):  # torch deprecates TorchScript; OpenAI's own CLIP files are TorchScript
        torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)).save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(ModelLoadError, match=r"ViT-B-32.pt as a checkpoint \(a TorchScript archive, as OpenAI's original"):
        load_clip(str(TINY_CLIP_CONFIG), str(tmp_path / "ViT-B-32.pt"))
    (tmp_path / "empty.pt").touch()
    with pytest.raises(ModelLoadError, match=r"^CLIP weights file .*empty.pt is empty \(an interrupted download"):
        load_clip(str(TINY_CLIP_CONFIG), str(tmp_path / "empty.pt"))
    with pytest.raises(ModelLoadError, match=r"^backbone weights file .*empty.pt is empty"):
        load_backbone(TINY_BACKBONE, str(tmp_path / "empty.pt"))


@pytest.mark.parametrize("load", ["clip", "backbone"])
def test_weights_given_as_a_folder_or_unreadable_say_so(tmp_path, load):
    """Bug: a folder was "not found" (it exists); an unreadable .safetensors was "No such file or directory"."""
    flag = f"--{load}-weights"
    what = "CLIP" if load == "clip" else "backbone"
    loader = (lambda weights: load_clip(str(TINY_CLIP_CONFIG), weights)) if load == "clip" else \
        (lambda weights: load_backbone(TINY_BACKBONE, weights))
    (tmp_path / "snapshot").mkdir()
    with pytest.raises(ModelLoadError, match=rf"^{what} weights .*snapshot is a folder; pass the weights file in it "
                                             rf"\({flag} .*snapshot/model.safetensors, for example\)"):
        loader(str(tmp_path / "snapshot"))
    for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "config.json"):  # walkthrough:
        (tmp_path / "snapshot" / name).write_bytes(b"x")  # the made-up name was offered beside real ones
    with pytest.raises(ModelLoadError, match=rf"\({flag} .*snapshot/open_clip_model.safetensors\)\.$"):
        loader(str(tmp_path / "snapshot"))
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(b"weights")
    locked.chmod(0)
    hidden = tmp_path / "closed" / "w.safetensors"  # walkthrough: in a folder that cannot be searched
    hidden.parent.mkdir()
    hidden.write_bytes(b"weights")
    hidden.parent.chmod(0)
    child = run_python_unprivileged(
        f"from zsfs.models import load_clip, load_backbone\n"
        f"from zsfs.testing.models import TINY_CLIP_CONFIG, TINY_BACKBONE\n"
        f"from zsfs.errors import ModelLoadError\n"
        f"for file in {[str(locked), str(hidden)]!r}:\n"
        f"    try:\n"
        f"        {'load_clip(str(TINY_CLIP_CONFIG), ' if load == 'clip' else 'load_backbone(TINY_BACKBONE, '}file)\n"
        f"    except ModelLoadError as error:\n"
        f"        print(error)\n")
    hidden.parent.chmod(0o755)
    assert child.stdout.splitlines() == [f"cannot read {what} weights file {file}: Permission denied"
                                         for file in (locked, hidden)], child


@pytest.mark.parametrize("load", ["clip", "backbone"])
def test_weights_through_a_link_loop_or_a_dangling_link_say_so_not_not_found(tmp_path, monkeypatch, load):
    """Bug: a weights link that `ls` lists (a link loop, a link whose target moved) was "not found; check
    the path", and one without a suffix "neither a pretrained tag nor an existing file"."""
    flag, what = f"--{load}-weights", "CLIP" if load == "clip" else "backbone"
    loader = (lambda weights: load_clip(str(TINY_CLIP_CONFIG), weights)) if load == "clip" else \
        (lambda weights: load_backbone(TINY_BACKBONE, weights))
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "current").symlink_to(tmp_path / "moved" / "vit.safetensors")
    for link, why in (("a.pt", "a link loop"), ("current", f"its target {tmp_path}/moved/vit.safetensors does not exist")):
        with pytest.raises(ModelLoadError, match=rf"^{what} weights file {re.escape(str(tmp_path / link))} is a link "
                                                 rf"that leads to no file \({why}\); mend the link, or pass {flag} "
                                                 r"the weights file itself\.$"):
            loader(str(tmp_path / link))
    monkeypatch.chdir(tmp_path)  # a bare name (no folder, no suffix) that is a link is a path too
    with pytest.raises(ModelLoadError, match=rf"^{what} weights file current is a link that leads to no file"):
        loader("current")


@pytest.mark.parametrize("load", ["clip", "backbone"])
def test_weights_reached_through_a_link_to_a_blob_without_suffix(tiny_clip, tiny_backbone, tmp_path, load):
    """A Hugging Face cache holds snapshots/REV/model.safetensors -> blobs/SHA (no suffix). Bug: the
    link was resolved, and the blob refused as "no tensors saved by torch or safetensors"."""
    model = tiny_clip.model if load == "clip" else tiny_backbone.model
    blob = tmp_path / "blobs" / "5cc1d47b0e"
    blob.parent.mkdir()
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(blob))
    link = tmp_path / "snapshots" / "aaaa" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    loaded = load_clip(str(TINY_CLIP_CONFIG), str(link)) if load == "clip" else load_backbone(TINY_BACKBONE, str(link))
    assert loaded.record["file"] == str(link) and loaded.record["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    reference = tiny_clip if load == "clip" else tiny_backbone
    x = pixels_for(reference)
    torch.testing.assert_close(loaded.encode_images(x), reference.encode_images(x))


def test_a_link_without_a_suffix_goes_by_its_targets_name(tiny_backbone, tmp_path):
    """current -> vit.safetensors: the libraries tell the format by the name, and the link's has none."""
    save_file(tiny_backbone.model.state_dict(), str(tmp_path / "vit.safetensors"))
    (tmp_path / "current").symlink_to(tmp_path / "vit.safetensors")
    loaded = load_backbone(TINY_BACKBONE, str(tmp_path / "current"))
    assert loaded.record["file"] == str(tmp_path / "vit.safetensors")
    # current -> snapshots/REV/model.safetensors -> ../../blobs/SHA: the first name with a suffix
    (tmp_path / "blobs").mkdir()
    (tmp_path / "vit.safetensors").rename(tmp_path / "blobs" / "5cc1d47b")
    (tmp_path / "snapshots" / "a1").mkdir(parents=True)
    (tmp_path / "snapshots" / "a1" / "model.safetensors").symlink_to("../../blobs/5cc1d47b")
    (tmp_path / "current").unlink()
    (tmp_path / "current").symlink_to("snapshots/a1/model.safetensors")
    chained = load_backbone(TINY_BACKBONE, str(tmp_path / "current"))
    assert chained.record["file"] == str(tmp_path / "snapshots" / "a1" / "model.safetensors")
    x = pixels_for(tiny_backbone)
    torch.testing.assert_close(loaded.encode_images(x), tiny_backbone.encode_images(x))


def test_a_tokenizer_that_cannot_be_had_is_named(tmp_path, monkeypatch, offline):
    """Bug: a model whose tokenizer comes from the Hugging Face hub ended in a ModuleNotFoundError traceback
    without `transformers` (and in a minute of retries with it, offline)."""
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed (whether or not it is here)
    config = json.loads(TINY_CLIP_CONFIG.read_text())
    config["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP"
    (tmp_path / "hf-tokenizer-clip.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"^could not load the tokenizer of CLIP hf-tokenizer-clip "
                                             r"\(timm/ViT-B-16-SigLIP: .*\); it needs the transformers package"):
        load_clip(str(tmp_path / "hf-tokenizer-clip.json"), "random")


def test_a_new_weights_path_for_an_imported_store_gets_the_import_explanation(tmp_path):
    """`--clip-weights FILE` on a store made by `zsfs import`: there is no zsfs model to relocate."""
    from zsfs.store.schema import IMPORTED_WEIGHTS
    from zsfs.weights import relocated, weights_from_record

    (tmp_path / "clip.pt").write_bytes(b"weights")
    record = {"name": "their-clip", "weights": IMPORTED_WEIGHTS, "file": None, "sha256": None}
    with pytest.raises(ModelLoadError, match=r"^the store's CLIP embeddings were imported \(`zsfs import`\) from another"):
        weights_from_record(relocated(record, tmp_path / "clip.pt", "CLIP"), "CLIP")


def test_a_hub_repositorys_open_clip_config_with_its_weights_file_keeps_their_preprocessing(tiny_clip, tmp_path):
    """An air-gapped user with a copy of an open_clip repository (open_clip_config.json beside
    open_clip_pytorch_model.bin) gets the weights' own preprocessing, as the tag would. Bug: the
    config was refused as "not an open_clip model config"."""
    repository = tmp_path / "tiny-clip.laion"
    repository.mkdir()
    preprocessing = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                     "resize_mode": "squash"}
    config = {"model_cfg": json.loads(TINY_CLIP_CONFIG.read_text()), "preprocess_cfg": preprocessing}
    (repository / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(tiny_clip.model.state_dict(), repository / "open_clip_pytorch_model.bin")
    loaded = load_clip(str(repository / "open_clip_config.json"), str(repository / "open_clip_pytorch_model.bin"))
    record = loaded.record
    assert record["name"] == "tiny-clip.laion" and record["config"] == config
    assert (record["mean"], record["std"], record["interpolation"], record["crop"]) == (
        [0.5] * 3, [0.25] * 3, "bilinear", "squash")
    x = pixels_for(tiny_clip)
    assert torch.equal(loaded.encode_texts(["a cat"]), tiny_clip.encode_texts(["a cat"]))
    reloaded = load_clip_from_record(json.loads(json.dumps(record)))
    assert reloaded.record == record and torch.equal(reloaded.encode_images(x), loaded.encode_images(x))
    assert reloaded.scaling.mean.flatten().tolist() == [0.5] * 3  # the workers' scaling is the config's


def test_a_hub_repository_given_as_the_clip_model_is_told_to_pass_its_files(tmp_path, monkeypatch):
    """Bug (air-gapped user with a downloaded repository): --clip-model REPO (the folder) and open_clip's
    --clip-model hf-hub:ORG/NAME were only "unknown CLIP model", with no way to the files zsfs takes."""
    repository = tmp_path / "tiny-clip.laion"
    repository.mkdir()
    (repository / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(TINY_CLIP_CONFIG.read_text())}))
    for name in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
        (repository / name).write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=rf"^CLIP model {repository} is a folder; pass its config file, and its "
                                             rf"weights file as --clip-weights: --clip-model {repository}/open_clip_"
                                             rf"config.json --clip-weights {repository}/open_clip_model.safetensors$"):
        load_clip(str(repository), "random")
    with pytest.raises(ModelLoadError, match=rf"^CLIP model {tmp_path} is a folder without an open_clip_config.json"):
        load_clip(str(tmp_path), "random")
    with pytest.raises(ModelLoadError, match=r"^--clip-model takes no hf-hub: names; download open_clip_config.json "
                                             r"and the weights file .* of the repository laion/CLIP-ViT-B-32-laion2B"
                                             r"-s34B-b79K into a folder REPO and pass them: --clip-model REPO/open_"
                                             r"clip_config.json --clip-weights REPO/open_clip_pytorch_model.bin$"):
        load_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "random")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ViT-B-32").mkdir()  # a folder named like an architecture leaves the name a name
    assert load_clip("ViT-B-32", "random").record["name"] == "ViT-B-32"


def test_a_hub_config_in_a_cache_is_named_after_its_repository_and_no_config_replaces_open_clips(tmp_path):
    """Pointed into a Hugging Face cache, a repository's config was named after the revision hash;
    a folder named like one of open_clip's models replaced that model's config in the process (a
    hub repository may carry one of open_clip's names with another release's config)."""
    config = {"model_cfg": json.loads(TINY_CLIP_CONFIG.read_text()), "preprocess_cfg": {}}
    snapshot = tmp_path / "models--someone--tiny-clip.cache" / "snapshots" / "0f1e2d"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    assert load_clip(str(snapshot / "open_clip_config.json"), "random").record["name"] == "tiny-clip.cache"
    (tmp_path / "ViT-B-32").mkdir()
    (tmp_path / "ViT-B-32" / "open_clip_config.json").write_text(json.dumps(config))
    named = load_clip(str(tmp_path / "ViT-B-32" / "open_clip_config.json"), "random").record
    assert re.fullmatch(r"ViT-B-32-[0-9a-f]{8}", named["name"]) and named["dim"] == 32, named["name"]
    assert load_clip_from_record(named).record["name"] == named["name"]
    assert load_clip("ViT-B-32", "random").record["dim"] == 512  # open_clip's own is untouched
    (tmp_path / "data" / "snapshots" / "v1").mkdir(parents=True)  # a folder called snapshots is no cache
    (tmp_path / "data" / "snapshots" / "v1" / "open_clip_config.json").write_text(json.dumps(config))
    assert load_clip(str(tmp_path / "data" / "snapshots" / "v1" / "open_clip_config.json"),
                     "random").record["name"] == "v1"


def test_json_that_is_not_an_open_clip_config(tmp_path):
    (tmp_path / "cfg.json").write_text('{"embed_dim": 8}')
    with pytest.raises(ModelLoadError, match="not an open_clip model config"):
        load_clip(str(tmp_path / "cfg.json"), "random")


def test_clip_download_failure_says_how_to_pass_a_file(offline):
    with pytest.raises(ModelLoadError) as caught:
        load_clip("ViT-B-32", "openai")
    message = str(caught.value)
    assert "could not download the CLIP weights ViT-B-32 / openai" in message and "Traceback" not in message
    # bug (air-gapped admin): the reason was open_clip's retries' error cut short, "Failed to download file (...)"
    assert "openai (HF_HUB_OFFLINE is set, and the Hugging Face cache (" in message, message
    assert "point HF_HOME at a copy of the Hugging Face cache" in message
    # bug: the advice kept ViT-B-32, whose GELU is not the QuickGELU these weights were trained with
    assert message.endswith("Or pass a local file: --clip-model ViT-B-32-quickgelu --clip-weights "
                            "/path/to/open_clip_pytorch_model.bin (from huggingface.co/timm/vit_base_patch32_clip_224.openai).")
    with pytest.raises(ModelLoadError) as caught:  # weights with their own preprocessing: a file cannot match it
        load_clip("ViT-H-14", "dfn5b")
    assert str(caught.value).endswith("--clip-model ViT-H-14-quickgelu --clip-weights /path/to/open_clip_pytorch_model.bin "
                                      "(from huggingface.co/apple/DFN5B-CLIP-ViT-H-14); but a file gets ViT-H-14's own "
                                      "image preprocessing, not these weights' (resize_mode differs), so its features "
                                      "would be off: prefer the cache.")


def test_a_store_built_from_a_tag_takes_no_file_and_says_how_to_work_offline():
    """Bug: the advice went in a circle offline: "pass --clip-weights FILE", then "not a file; drop --clip-weights"."""
    from zsfs.weights import relocated

    record = {"name": "ViT-B-32", "weights": "openai", "file": None, "sha256": None}
    with pytest.raises(ModelLoadError, match=r"^the CLIP model of the store was built with the pretrained weights "
                                             r"ViT-B-32 / openai, which zsfs loads by that name, not from a file; drop --clip-weights\. "
                                             r"Without a network, point HF_HOME at a copy of the Hugging Face cache"):
        relocated(record, "/some/file.bin", "CLIP")
    # review: a backbone timm downloads from a URL is cached by torch, not in HF_HOME
    backbone = {"name": "gcvit_base.in1k", "weights": "default", "file": None, "sha256": None}
    with pytest.raises(ModelLoadError, match=r"drop --backbone-weights\. Without a network, copy gcvit_base[^ ]*\.pth "
                                             r"from a machine that downloaded it into timm's cache folder .*/checkpoints"):
        relocated(backbone, "/some/file.bin", "backbone")


def _cached_default_weights(cache, monkeypatch, state: dict) -> None:
    import huggingface_hub.constants as hub

    cache_default_backbone_weights(cache, state)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))


def test_hf_home_set_to_the_hub_folder_itself_is_pointed_out(tmp_path, monkeypatch, offline):
    """Walkthrough: HF_HOME=/copy/hub (the folder holding models--*) said only that the cache
    /copy/hub/hub does not hold the weights."""
    import huggingface_hub.constants as hub

    cache_default_backbone_weights(tmp_path, {"x": torch.zeros(1)})  # tmp_path/models--timm--...
    monkeypatch.setattr(hub, "HF_HOME", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match=rf"does not hold them\)\. HF_HOME \({tmp_path}\) holds the models--\* "
                                             r"folders itself: point HF_HOME at the folder above it, or HF_HUB_CACHE at "
                                             r"it\. Or pass a local file"):
        load_backbone(TINY_BACKBONE, "default")
    (tmp_path / "hub").mkdir()  # a cache there (empty): no such slip to point out
    with pytest.raises(ModelLoadError) as caught:
        load_backbone(TINY_BACKBONE, "default")
    assert "HF_HOME (" not in str(caught.value)
    # review: a cache in a folder that cannot be searched raised pathlib's PermissionError while the hint was looked for
    (tmp_path / "locked").mkdir(mode=0)
    child = run_python_unprivileged(
        f"import os\nos.environ.update(HF_HOME={str(tmp_path / 'locked' / 'hf')!r}, HF_HUB_OFFLINE='1')\n"
        "from zsfs.models import load_backbone\nfrom zsfs.testing.models import TINY_BACKBONE\n"
        "from zsfs.errors import ModelLoadError\n"
        "try:\n    load_backbone(TINY_BACKBONE, 'default')\nexcept ModelLoadError as error:\n    print(error)\n")
    (tmp_path / "locked").chmod(0o755)
    # and the folder this user cannot search is named (it said "the cache does not hold them")
    assert child.stdout.startswith("cannot read the Hugging Face cache for the backbone weights of test_vit from "
                                   f"huggingface.co/timm/test_vit.r160_in1k ({tmp_path / 'locked'}: Permission "
                                   "denied)"), child

def test_pretrained_weights_are_recorded_by_their_values_and_other_ones_under_the_name_refused(
        tmp_path, monkeypatch, offline):
    """A tag is known by name only (no file to hash): a cache holding newer, or another node's,
    weights under that name gave other features silently (predict's OOD distances all 1.00)."""
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(5)
        state = timm.create_model(TINY_BACKBONE).state_dict()
    _cached_default_weights(tmp_path, monkeypatch, state)
    loaded = load_backbone(TINY_BACKBONE, "default")
    assert loaded.record["weights"] == "default" and len(loaded.record["weights_fingerprint"]) == 64
    x = pixels_for(loaded)
    assert torch.equal(load_backbone_from_record(loaded.record).encode_images(x), loaded.encode_images(x))
    older = {key: value for key, value in loaded.record.items() if key != "weights_fingerprint"}
    state = {key: value + 0.01 for key, value in state.items()}  # the weights updated under the same name
    _cached_default_weights(tmp_path, monkeypatch, state)
    with pytest.raises(ModelLoadError, match=r"^the backbone weights test_vit / default loaded here are not the ones "
                                             r"the store was built with \(their values differ"):
        load_backbone_from_record(loaded.record)
    load_backbone_from_record(older)  # a store of an earlier zsfs has no fingerprint to check


def test_weights_a_store_recorded_by_name_and_the_cache_lost_are_not_offered_from_a_file(
        tmp_path, monkeypatch, offline):
    """Bug (new user): reloading a tag-built model offline said "Or pass a local file: --backbone-weights",
    and the file was then refused ("loads by that name, not from a file")."""
    import huggingface_hub.constants as hub
    import timm

    _cached_default_weights(tmp_path / "cache", monkeypatch, timm.create_model(TINY_BACKBONE).state_dict())
    record = load_backbone(TINY_BACKBONE, "default").record
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty"))  # a machine whose cache lacks them
    with pytest.raises(ModelLoadError) as caught:
        load_backbone_from_record(record)
    message = str(caught.value)
    assert message.startswith("could not download the backbone weights of test_vit from "
                              "huggingface.co/timm/test_vit.r160_in1k (HF_HUB_OFFLINE is set") and \
        ("); the store was built with them by name, so zsfs loads them by that name only, from the cache, not from "
         "a file. Without a network, point HF_HOME at") in message, message
    assert "--backbone-weights" not in message
    with pytest.raises(ModelLoadError, match=r"\); the store /data/s.h5 was built with them by name, so"):
        load_backbone_from_record(record, store="/data/s.h5")  # review: predict and text did not say which store
    with pytest.raises(ModelLoadError, match="Or pass a local file: --backbone-weights"):  # a first load: a file is a way
        load_backbone(TINY_BACKBONE, "default")


def test_weights_timm_downloads_from_a_url_are_cached_by_torch_and_the_advice_says_so():
    """Review: a backbone whose weights come from a URL only (no hub id) was told to point HF_HOME at a
    Hugging Face cache, which timm never reads for it."""
    from timm.models import get_pretrained_cfg

    from zsfs.models.backbone import _timm_cache_advice

    url_only = get_pretrained_cfg("gcvit_base.in1k", allow_unregistered=True)
    assert url_only.url and not url_only.hf_hub_id
    advice = _timm_cache_advice(url_only)
    assert advice.startswith(f"Without a network, copy {url_only.url.rsplit('/', 1)[1]} from a machine that "
                             f"downloaded it into timm's cache folder {torch.hub.get_dir()}/checkpoints"), advice
    assert "HF_HOME" in _timm_cache_advice(get_pretrained_cfg(TINY_BACKBONE, allow_unregistered=True))


def test_a_download_error_crosses_processes_whole():
    """A Ray worker's error reaches the driver pickled: the download error keeps its parts and text."""
    from zsfs.weights import WeightsDownloadError

    error = WeightsDownloadError("backbone", "backbone weights of x", "offline", "--backbone-weights FILE", "Copy it.")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.role, copy.cache_advice, str(copy)) == ("backbone", "Copy it.", str(error))
    assert str(copy.by_name_only("why")).startswith("could not download the backbone weights of x (offline); why, ")


def test_both_models_missing_offline_are_named_in_one_error(offline, monkeypatch):
    """Air-gapped admin: with neither default's weights in the cache, extract said only CLIP's; fetched
    (a ticket, a transfer) and run again, it said the backbone's: a second round trip."""
    import timm

    from zsfs.models import by_name_only, load_models
    from zsfs.weights import BothWeightsMissingError

    built = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: built.append(args))
    with pytest.raises(BothWeightsMissingError) as caught:
        load_models("ViT-B-32", "openai", TINY_BACKBONE, "default")
    message = str(caught.value)
    assert message.startswith("could not download the CLIP weights ViT-B-32 / openai nor the backbone weights of "
                              "test_vit from huggingface.co/timm/test_vit.r160_in1k (HF_HUB_OFFLINE is set, and the "
                              "Hugging Face cache ("), message
    assert message.endswith("Or pass local files: --backbone-weights /path/to/model.safetensors and --clip-model "
                            "ViT-B-32-quickgelu --clip-weights /path/to/open_clip_pytorch_model.bin (from "
                            "huggingface.co/timm/vit_base_patch32_clip_224.openai)."), message
    assert built == []  # the backbone's absence is found without building it (ViT-G: 30 s, 5 GB)
    copy = pickle.loads(pickle.dumps(caught.value))  # a Ray worker's error reaches the driver so
    assert str(copy) == message and (copy.clip.role, copy.backbone.role) == ("clip", "backbone")
    with pytest.raises(ModelLoadError) as caught:  # a store's rerun: both by name, no file offered
        with by_name_only("the store s.h5 was started with them by name"):
            load_models("ViT-B-32", "openai", TINY_BACKBONE, "default")
    by_name = str(caught.value)
    assert by_name.count("so zsfs loads them by that name only") == 2 and "--clip-weights" not in by_name, by_name
    with pytest.raises(ModelLoadError) as caught:  # only CLIP's missing: said alone, as before
        load_models("ViT-B-32", "openai", TINY_BACKBONE, "random")
    assert not isinstance(caught.value, BothWeightsMissingError) and "backbone" not in str(caught.value)


def test_a_cut_short_download_in_the_cache_is_named_not_a_traceback(tmp_path, monkeypatch, offline):
    """Bug: a truncated file in the Hugging Face cache ended in safetensors' traceback."""
    _cached_default_weights(tmp_path, monkeypatch, {"head.weight": torch.zeros(2, 2)})
    cached = next(tmp_path.rglob("model.safetensors"))
    cached.write_bytes(cached.read_bytes()[:20])  # cut short
    with pytest.raises(ModelLoadError, match=r"^cannot read the downloaded backbone weights of test_vit \(.*\); if the "
                                             r"download was cut short or damaged, delete the folder "
                                             rf"{tmp_path}/.*models--timm--test_vit.r160_in1k of the Hugging Face cache "
                                             r".*; or pass a local file: --backbone-weights /path/to/model.safetensors"
                       ) as damaged:
        load_backbone(TINY_BACKBONE, "default")
    copy = pickle.loads(pickle.dumps(damaged.value))  # from a Ray worker: whole
    assert type(copy) is type(damaged.value) and str(copy) == str(damaged.value)
    # walkthrough: a store built by the name refuses a file, so the advice for it offers the cache only
    with pytest.raises(ModelLoadError) as caught, by_name_only("s.h5 was built with them by name"):
        load_backbone(TINY_BACKBONE, "default")
    said = str(caught.value)
    assert "s.h5 was built with them by name, so zsfs loads them by that name only, from the cache" in said, said
    assert "--backbone-weights" not in said and "intact copy" in said
    # weights that read but do not fit (another timm version's): said as they are; a download would not help
    import timm

    resized = {**timm.create_model(TINY_BACKBONE).state_dict(), "cls_token": torch.zeros(1, 1, 5)}
    cache_default_backbone_weights(tmp_path, resized)
    with pytest.raises(ModelLoadError, match=r"^cannot load the backbone weights of test_vit: ") as caught:
        load_backbone(TINY_BACKBONE, "default")
    assert "downloaded again" not in str(caught.value)


_LOAD_AS_ANOTHER_USER = """
import os
os.environ.update(HF_HOME={home!r}, HF_HUB_OFFLINE="1")
import open_clip.pretrained
from zsfs.errors import ModelLoadError
from zsfs.models import load_backbone, load_clip
from zsfs.testing.models import TINY_BACKBONE, TINY_CLIP_CONFIG
load_clip(str(TINY_CLIP_CONFIG), "random")  # registers the tiny architecture, to give it a tag of the hub's
open_clip.pretrained._PRETRAINED["zsfs-tiny-clip"] = {{"tiny": open_clip.pretrained._pcfg(hf_hub="zsfs/tiny-clip/")}}
for load in (lambda: load_clip("zsfs-tiny-clip", "tiny"), lambda: load_backbone(TINY_BACKBONE, "default")):
    try:
        print("loaded", load().record["weights"])
    except ModelLoadError as error:
        print(error)
"""


def test_a_cache_copy_this_user_may_not_read_is_said_so_not_missing_nor_damaged(tiny_clip, tmp_path):
    """Bug (a cluster's shared HF_HOME, filled by another account): an unreadable file of the cache's copy
    was "could not download ... (No such file or directory)" (timm) or a damaged download to delete
    (open_clip); a folder of it that cannot be searched, "the cache does not hold them"."""
    cache = tmp_path / "hf" / "hub"
    cache_default_backbone_weights(cache, load_backbone(TINY_BACKBONE, "random").model.state_dict())
    snapshot = cache / "models--zsfs--tiny-clip" / "snapshots" / "r1"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("r1")
    torch.save(tiny_clip.model.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    load_as_another_user = lambda: run_python_unprivileged(_LOAD_AS_ANOTHER_USER.format(home=str(tmp_path / "hf")))
    assert load_as_another_user().stdout.splitlines() == ["loaded tiny", "loaded default"]  # readable: they load
    files = [snapshot / "open_clip_pytorch_model.bin", next(cache.rglob("model.safetensors"))]
    for file in files:
        file.chmod(0)
    said = load_as_another_user().stdout.splitlines()
    for file in files:
        file.chmod(0o644)
    for line, file, weights, advice in zip(said, files, ("CLIP weights zsfs-tiny-clip / tiny", "backbone weights of "
                                           "test_vit from huggingface.co/timm/test_vit.r160_in1k"),
                                           ("--clip-model zsfs-tiny-clip --clip-weights", "--backbone-weights")):
        assert line.startswith(f"cannot read the Hugging Face cache for the {weights} ({file}: Permission "
                               f"denied); this user may not read it: have the cache's owner make it readable (chmod "
                               f"-R a+rX {file.parents[2]}, and the folders above it searchable), or point HF_HOME "
                               f"at a readable copy; or pass a local file: {advice}"), line
    folders = [cache / "models--zsfs--tiny-clip", cache / "models--timm--test_vit.r160_in1k"]
    for folder in folders:
        folder.chmod(0)
    said = load_as_another_user().stdout.splitlines()
    for folder in folders:
        folder.chmod(0o755)
    assert [re.search(r"^cannot read the .*? \((.*?)\); this user may not read it", line)[1] for line in said] == \
        [f"{folder}: Permission denied" for folder in folders], said


def test_the_cache_folder_of_a_tag_whose_hub_entry_names_a_file_is_the_repositorys():
    """Bug: open_clip's tags of the form org/name/pytorch_model.bin (ViTamin) were told, cut short in the
    cache, to delete the folder models--org--name--pytorch_model.bin, which does not exist."""
    import huggingface_hub.constants as hub

    from zsfs.models.common import pretrained_error

    try:
        exec(compile("raise KeyError(101)", "/site-packages/torch/serialization.py", "exec"))  # a cut file's error
    except KeyError as error:
        unreadable = error
    for hub_id in ("jienengchen/ViTamin-S/pytorch_model.bin", "timm/vit_base_patch32_clip_224.openai/",
                   "timm/test_vit.r160_in1k@a1b2c3"):
        folder = Path(hub.HF_HUB_CACHE) / f"models--{'--'.join(hub_id.split('@')[0].split('/')[:2])}"
        said = str(pretrained_error("clip", "CLIP weights X / y", hub_id, unreadable, "FILE"))
        assert f"delete the folder {folder} of the Hugging Face cache" in said, said


def test_running_out_of_memory_while_reading_weights_is_not_blamed_on_the_file():
    """Review (mutation: only MemoryError was checked passed): torch's C allocator says "can't
    allocate memory" from inside torch.load; a valid ViT-G file must not be called unreadable."""
    from zsfs.weights import unreadable_checkpoint

    def raised_in_torch_load(error: Exception) -> Exception:  # its last frame in torch's reader, as torch.load's are
        try:
            exec(compile("raise error", "/site-packages/torch/serialization.py", "exec"), {"error": error})
        except Exception as caught:
            return caught
        raise AssertionError("not raised")

    assert unreadable_checkpoint(raised_in_torch_load(KeyError(101))) is True  # a text file's "KeyError: 101"
    assert unreadable_checkpoint(raised_in_torch_load(RuntimeError("DefaultCPUAllocator: can't allocate memory: "
                                                                   "you tried to allocate 5000000000 bytes"))) is False


def test_weights_saved_in_one_format_and_named_as_the_other_are_told_to_be_renamed(tmp_path):
    """Walkthrough: a safetensors file named .bin (a copied hub blob, a renamed download) was "no
    tensors saved by torch or safetensors", also when it was the very file a store recorded."""
    state = {key: value.contiguous() for key, value in load_backbone(TINY_BACKBONE, "random").model.state_dict().items()}
    save_file(state, tmp_path / "vit.bin")
    save_file(state, tmp_path / "blob")
    torch.save(state, tmp_path / "vit2.safetensors")
    for name, told in (("vit.bin", "it is a safetensors file named '.bin', .* as vit.safetensors \\(its sha256"),
                       ("blob", "it is a safetensors file without a suffix, .* as blob.safetensors"),
                       ("vit2.safetensors", "it is a torch file named '.safetensors', .* as vit2.pt")):
        with pytest.raises(ModelLoadError, match=f"^cannot read {tmp_path}/{name} as a checkpoint: {told}"):
            load_backbone(TINY_BACKBONE, str(tmp_path / name))
    (tmp_path / "vit.bin").rename(tmp_path / "vit.safetensors")  # as told: it loads
    assert load_backbone(TINY_BACKBONE, str(tmp_path / "vit.safetensors")).record["weights"] == "file"


# --- backbone ------------------------------------------------------------------------------------


def test_tiny_backbone_record_and_features(tiny_backbone):
    record = tiny_backbone.record
    assert (record["name"], record["weights"], record["output"]) == (TINY_BACKBONE, "random", "pre_logits")
    assert record["dim"] == 64 and record["image_size"] == [160, 160]
    assert record["mean"] == record["std"] == [0.5, 0.5, 0.5]
    assert record["crop_pct"] == pytest.approx(0.95) and record["crop"] == "center"
    assert record["pretrained_tag"] is None  # random weights: no pretrained tag claimed in the store
    assert json.loads(json.dumps(record)) == record
    x = pixels_for(tiny_backbone)
    assert x.shape == (3, 3, 160, 160)
    assert_normalised(tiny_backbone.encode_images(x), (3, 64))


def test_clip_image_towers_keep_their_head(monkeypatch):
    from timm.models import get_pretrained_cfg

    assert get_pretrained_cfg("vit_giant_patch14_clip_224.laion2b").num_classes == 1024  # the paper's 1024-d
    assert keeps_clip_head("vit_giant_patch14_clip_224.laion2b", "laion2b")
    assert not keeps_clip_head("vit_base_patch16_clip_224.openai_ft_in1k", "openai_ft_in1k")  # a classifier
    assert not keeps_clip_head("vit_base_patch16_clip_224", "laion2b_ft_in12k_in1k")  # the default tag
    assert not keeps_clip_head("vit_base_patch16_224.augreg_in21k", "augreg_in21k")
    monkeypatch.setattr("zsfs.models.backbone.BACKBONE_HEAD_MARKER", "test_")  # make the tiny model a "CLIP tower"
    headed = load_backbone(TINY_BACKBONE, "random")
    assert (headed.record["output"], headed.record["dim"]) == ("head", 1000)
    assert_normalised(headed.encode_images(pixels_for(headed, 2)), (2, 1000))


@pytest.mark.parametrize("with_head", [False, True])
def test_backbone_checkpoint_file_round_trip(tiny_backbone, tmp_path, with_head):
    import timm

    if with_head:  # a full timm checkpoint (classifier included): features must not change
        with torch.random.fork_rng():
            torch.manual_seed(1)
            full = timm.create_model(TINY_BACKBONE)
        state, reference = full.state_dict(), full.eval()
        full.reset_classifier(0)
    else:
        state, reference = tiny_backbone.model.state_dict(), tiny_backbone.model
    file = tmp_path / "backbone.safetensors"
    save_file(state, str(file))
    loaded = load_backbone(TINY_BACKBONE, str(file))
    assert (loaded.record["weights"], loaded.record["output"], loaded.record["dim"]) == ("file", "pre_logits", 64)
    assert loaded.record["pretrained_tag"] is None  # a file's weights are not the tag's
    x = pixels_for(tiny_backbone)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference(tiny_backbone.scaling(x)), dim=-1)
    torch.testing.assert_close(loaded.encode_images(x), expected)
    assert torch.equal(load_backbone_from_record(loaded.record).encode_images(x), loaded.encode_images(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_fine_tuned_backbone_loads_with_its_own_classifier_size(tiny_backbone, tmp_path, suffix):
    """Bug: a file whose classifier has 10 classes (fine-tuned) was refused as "size mismatch ...
    Check that --backbone matches the checkpoint"; the classifier is dropped anyway."""
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(2)
        tuned = timm.create_model(TINY_BACKBONE, num_classes=10).eval()
    file = tmp_path / f"tuned{suffix}"
    if suffix == ".safetensors":
        save_file(tuned.state_dict(), str(file))
    else:
        torch.save(tuned.state_dict(), file)
    loaded = load_backbone(TINY_BACKBONE, str(file))
    assert (loaded.record["output"], loaded.record["dim"]) == ("pre_logits", 64)
    x = pixels_for(tiny_backbone)
    tuned.reset_classifier(0)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(tuned(tiny_backbone.scaling(x)), dim=-1)
    torch.testing.assert_close(loaded.encode_images(x), expected)


def test_an_open_clip_checkpoint_loads_as_the_timm_clip_tower_it_holds(tmp_path):
    """The file an air-gapped user has for the default backbone (the paper's ViT-G/14) is often the
    open_clip checkpoint (visual.proj, not head). Bug: refused as having no projection head,
    although timm converts it. ViT-B/32 here, randomly initialised: the same code path."""
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-32").eval()
    torch.save(clip.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    tower = load_backbone("vit_base_patch32_clip_224.laion2b", str(tmp_path / "open_clip_pytorch_model.bin"))
    assert (tower.record["output"], tower.record["dim"]) == ("head", 512)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        same = torch.nn.functional.cosine_similarity(tower.model(pixels), clip.encode_image(pixels))
    assert same.min() > 0.99999, same


def test_backbone_from_record_checks_file_and_init(tiny_backbone, tmp_path):
    file = tmp_path / "b.pth"
    torch.save(tiny_backbone.model.state_dict(), file)
    record = load_backbone(TINY_BACKBONE, str(file)).record
    assert record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    x = pixels_for(tiny_backbone)
    assert torch.equal(load_backbone_from_record(tiny_backbone.record).encode_images(x), tiny_backbone.encode_images(x))
    torch.save({"other": torch.zeros(1)}, file)
    with pytest.raises(ModelLoadError, match="not the one the store was built with"):
        load_backbone_from_record(record)
    with pytest.raises(ModelLoadError, match="initialises it differently"):
        load_backbone_from_record({**tiny_backbone.record, "init_fingerprint": "f" * 64})


def test_backbone_file_that_does_not_fit(tiny_backbone, tiny_clip, tmp_path):
    vit_file = tmp_path / "vit.safetensors"
    save_file(tiny_backbone.model.state_dict(), str(vit_file))
    # timm alone would load this non-strictly and leave the EfficientNet random.
    with pytest.raises(ModelLoadError, match="does not fit the backbone test_efficientnet") as refused:
        load_backbone("test_efficientnet", str(vit_file))
    assert str(refused.value).endswith(". Check that --backbone matches the checkpoint."), refused
    # walkthrough: another model's file for a CLIP tower was blamed on its head alone
    with pytest.raises(ModelLoadError, match=r"vit.safetensors has no classifier/projection head, which "
                                             r"vit_base_patch32_clip_224.laion2b needs .* Check that --backbone matches"):
        load_backbone("vit_base_patch32_clip_224.laion2b", str(vit_file))
    clip_file = tmp_path / "clip.pt"
    torch.save(tiny_clip.model.state_dict(), clip_file)
    with pytest.raises(ModelLoadError, match="does not fit the backbone test_vit") as refused:
        load_backbone(TINY_BACKBONE, str(clip_file))
    # a user with both files, named alike, swapped them and was told to check --backbone
    assert "...." not in str(refused.value) and str(refused.value).endswith(
        '"... It is a whole CLIP checkpoint, text tower included (for --clip-weights?); as a backbone, timm reads one '
        "with the CLIP image tower of its architecture (--backbone vit_base_patch32_clip_224 for a ViT-B-32's, "
        "say)."), refused  # (it read "....")
    for junk in ("hello", "--model test_vit\n"):  # bug: torch's "KeyError: 101", or "retry with weights_only=False"
        (tmp_path / "junk.pth").write_text(junk)
        with pytest.raises(ModelLoadError, match=r"cannot read .*junk.pth as a checkpoint \(its content is no tensors "
                                                 r"saved by torch or safetensors\); pass a \.safetensors or"):
            load_backbone(TINY_BACKBONE, str(tmp_path / "junk.pth"))
    torch.save(tiny_backbone.model, tmp_path / "whole.pth")  # the model object, not its state_dict
    with pytest.raises(ModelLoadError, match=r"whole.pth as a checkpoint \(a pickled Python object, such as a whole "
                                             r"model saved with torch.save\(model\), not its tensors\)"):
        load_backbone(TINY_BACKBONE, str(tmp_path / "whole.pth"))
    (tmp_path / "cut.pth").write_bytes((tmp_path / "clip.pt").read_bytes()[:2000])  # an interrupted download
    with pytest.raises(ModelLoadError, match=r"cut.pth as a checkpoint \((?!its content).*\); pass"):
        load_backbone(TINY_BACKBONE, str(tmp_path / "cut.pth"))


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("test_vitt", "random", r"unknown timm model 'test_vitt' \(close names: test_vit"),
        ("test_vit.bogus", "random", r"no such pretrained tag \(known: test_vit.r160_in1k\)"),
        (TINY_BACKBONE, "/no/such/model.safetensors", "backbone weights file /no/such/model.safetensors not found"),
        (TINY_BACKBONE, "openai", "must be 'default', 'random' or an existing file"),
        ("vit_giant_patch14_224", "default", "has no pretrained weights"),
    ],
)
def test_backbone_name_and_weights_errors(name, weights, message):
    with pytest.raises(ModelLoadError, match=message):
        load_backbone(name, weights)


def test_backbone_download_failure_says_how_to_pass_a_file(offline, monkeypatch):
    import timm

    built = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: built.append(args))
    with pytest.raises(ModelLoadError) as caught:
        load_backbone(TINY_BACKBONE, "default")
    message = str(caught.value)
    # new user: ViT-G took 30 s and 5 GB to build before its download failed; uncached offline: not built at all
    assert built == []
    assert "(HF_HUB_OFFLINE is set, and the Hugging Face cache (" in message  # as the fixture sets it
    monkeypatch.delenv("HF_HUB_OFFLINE")  # offline because the hub did not answer (hub_offline_unless_reachable)
    with pytest.raises(ModelLoadError, match=r"\(huggingface.co cannot be reached, and the Hugging Face cache \("):
        load_backbone(TINY_BACKBONE, "default")
    assert built == []
    # bug (docs review): the README says it names where from; the CLIP message did, this one did not
    assert "could not download the backbone weights of test_vit from huggingface.co/timm/test_vit.r160_in1k (" \
        in message, message
    assert "--backbone-weights /path/to/model.safetensors" in message


def test_openai_tag_gets_quick_gelu(monkeypatch):
    """OpenAI weights need QuickGELU, which the plain ViT-B-32 config lacks (open_clip only warns)."""
    import open_clip

    seen = {}

    def capture(arch, **kwargs):
        seen.update(kwargs, arch=arch)
        raise KeyboardInterrupt  # stop before building a real ViT-B/32

    monkeypatch.setattr("zsfs.models.clip._download_clip_tag", lambda arch, tag: None)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", capture)
    with pytest.raises(KeyboardInterrupt):
        load_clip("ViT-B-32", "openai")
    assert seen == {"arch": "ViT-B-32", "pretrained": "openai", "force_quick_gelu": True}


@pytest.mark.parametrize("reachable", [False, True])
def test_unreachable_hub_means_cache_only_instead_of_a_minute_of_retries(monkeypatch, reachable, tmp_path):
    import huggingface_hub.constants as hub
    import timm

    _cached_default_weights(tmp_path, monkeypatch, {"x": torch.zeros(1)})  # cached: the model is built, then loads
    offline_during_download = []

    def fake_create_model(*args, **kwargs):
        offline_during_download.append(hub.HF_HUB_OFFLINE)
        raise OSError("no such file in the local cache")

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("zsfs.weights._reachable", lambda host, port, timeout: reachable)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    with pytest.raises(ModelLoadError, match="could not download the backbone weights of test_vit"):
        load_backbone(TINY_BACKBONE, "default")
    assert offline_during_download == [not reachable]
    assert hub.HF_HUB_OFFLINE is False  # restored


def test_a_mirror_on_a_port_of_its_own_is_asked_and_named(monkeypatch):
    """New user: HF_ENDPOINT=http://127.0.0.1:8765 (an internal mirror) was never asked: zsfs tried
    port 443 of its host, went offline, and said the weights could not come from huggingface.co."""
    import socket

    import huggingface_hub.constants as hub

    from zsfs.weights import hub_address, hub_offline_unless_reachable

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with socket.create_server(("127.0.0.1", 0)) as mirror:  # listening: a connection is taken, nothing served
        port = mirror.getsockname()[1]
        monkeypatch.setattr(hub, "ENDPOINT", f"http://127.0.0.1:{port}")
        with hub_offline_unless_reachable(timeout=5):
            assert hub.HF_HUB_OFFLINE is False  # the mirror answers: downloads go to it
        assert hub_address("timm/test_vit.r160_in1k") == f"127.0.0.1:{port}/timm/test_vit.r160_in1k"
    with hub_offline_unless_reachable(timeout=5):  # closed now: the cache only, at once
        assert hub.HF_HUB_OFFLINE is True
    assert hub.HF_HUB_OFFLINE is False
    # review: a mirror's password is never shown, its path is (the files are there); a malformed port raises not
    monkeypatch.setattr(hub, "ENDPOINT", "https://user:s3cret@mirror.internal:8443/api/hf/")
    assert hub_address("timm/x") == "mirror.internal:8443/api/hf/timm/x"
    monkeypatch.setattr(hub, "ENDPOINT", "http://mirror:99999")
    assert hub_address("timm/x") == "mirror/timm/x"
    monkeypatch.setattr("zsfs.weights._reachable", lambda host, port, timeout: port == 80)
    with hub_offline_unless_reachable(timeout=5):
        assert hub.HF_HUB_OFFLINE is False

def test_random_clip_loads_without_open_clip_warning(caplog):
    """Bug: open_clip warned 'No pretrained weights loaded' although random init was asked for."""
    from zsfs.testing.models import TINY_CLIP_CONFIG

    with caplog.at_level(logging.WARNING):
        load_clip(str(TINY_CLIP_CONFIG), "random")
    assert not [r for r in caplog.records if "pretrained weights" in r.getMessage()]


def test_a_random_or_nameless_record_is_refused_in_words(tiny_clip, tmp_path):
    """A new weights path for random weights says they were random; a record without a model
    name (a store written by hand) says so, not a KeyError or open_clip's own error."""
    from zsfs.weights import relocated

    with pytest.raises(ModelLoadError, match=r"^the CLIP model of the store was built with weights 'random', not "
                                             r"a file; drop --clip-weights$"):
        relocated(dict(tiny_clip.record), tmp_path / "clip.pt", "CLIP")
    with pytest.raises(ModelLoadError, match=r"^the store records no CLIP model name or weights"):
        load_clip_from_record({**tiny_clip.record, "name": None})


def test_a_clip_file_is_judged_the_recorded_one_by_its_sha256(tiny_clip, tmp_path):
    """A rerun on a finished store judges, without loading, whether it asks for the recorded
    model: another weights file of the same architecture is not it."""
    from zsfs.models import clip_as_recorded

    state = tiny_clip.model.state_dict()
    torch.save(state, tmp_path / "a.pt")
    first = next(key for key, value in state.items() if value.is_floating_point())
    torch.save({**state, first: state[first] + 1}, tmp_path / "b.pt")
    record = load_clip(str(TINY_CLIP_CONFIG), str(tmp_path / "a.pt")).record
    identity = json.loads(json.dumps({key: value for key, value in record.items() if key != "file"}))
    assert clip_as_recorded(str(TINY_CLIP_CONFIG), str(tmp_path / "a.pt"), identity)
    assert not clip_as_recorded(str(TINY_CLIP_CONFIG), str(tmp_path / "b.pt"), identity)


def _bytes_read_by_this_process() -> int:
    """Bytes this process has read through read(2) so far (the kernel's count, page cache included)."""
    with open("/proc/self/io") as counters:
        return next(int(line.split()[1]) for line in counters if line.startswith("rchar:"))


def test_a_weights_file_is_read_once_per_process_while_unchanged_and_again_when_rewritten(tmp_path):
    file = tmp_path / "weights.safetensors"
    file.write_bytes(os.urandom(8 << 20))
    recent = unchanged_file_sha256(file)
    start = _bytes_read_by_this_process()
    assert unchanged_file_sha256(file) == recent  # changed in the last 2 s: read again, a timestamp may not have moved
    assert _bytes_read_by_this_process() - start >= 8 << 20
    time.sleep(2.1)
    first = unchanged_file_sha256(file)
    start = _bytes_read_by_this_process()
    assert unchanged_file_sha256(file) == first == recent
    assert _bytes_read_by_this_process() - start < 1 << 20
    with open(file, "r+b") as handle:  # the same size, the same inode
        handle.write(b"changed")
    assert unchanged_file_sha256(file) == hashlib.sha256(file.read_bytes()).hexdigest() != first
