"""The one real pretrained model available offline: tf_efficientnet_lite0 on 100 ImageNet photos.

Needs ../shared (see ../shared/README.md); ``pytest -m 'not shared'`` leaves it out.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from zsfs.models import load_backbone
from zsfs.decode import decode_image

NAME = "tf_efficientnet_lite0"
WEIGHTS = "models/tf_efficientnet_lite0.safetensors"
IMAGES = "data/imagenet-samples-100"



def test_a_missing_shared_file_fails_loudly_instead_of_skipping():
    from conftest import pytest_runtest_setup

    class Item:
        def get_closest_marker(self, name):
            return pytest.mark.shared("models/no-such-model.safetensors").mark if name == "shared" else None

    with pytest.raises(pytest.fail.Exception, match=r"needs \.\./shared/models/no-such-model.safetensors .*"
                       r"run pytest -m 'not shared' to leave them out"):
        pytest_runtest_setup(Item())


@pytest.mark.shared(WEIGHTS, IMAGES, IMAGES + ".csv")
def test_local_weights_give_imagenet_accuracy(shared):
    weights = shared / WEIGHTS
    backbone = load_backbone(NAME, str(weights))
    record = backbone.record
    # the path as given, made absolute: a linked folder (../shared may be one) is not resolved, so
    # the record keeps the name a user can re-point
    assert (record["weights"], record["file"], record["output"]) == ("file", os.path.abspath(weights), "pre_logits")
    assert record["dim"] == 1280 and record["image_size"] == [224, 224]
    assert record["mean"] == record["std"] == [0.5, 0.5, 0.5]  # from timm's config for this model
    assert record["interpolation"] == "bicubic" and len(record["sha256"]) == 64

    with open(shared / (IMAGES + ".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100
    images = [decode_image(shared / IMAGES / row["file"]) for row in rows]  # all 100 must decode
    assert all(image.mode == "RGB" and min(image.size) > 0 for image in images)
    pixels = torch.stack([backbone.preprocess(image) for image in images])

    # Pre-logits features times the checkpoint's own classifier = the pretrained model's logits.
    with safe_open(str(weights), framework="pt") as tensors:
        weight, bias = tensors.get_tensor("classifier.weight"), tensors.get_tensor("classifier.bias")
    with torch.inference_mode():
        features = backbone.model(backbone.scaling(pixels))  # preprocess hands over uint8 pixels
    predicted = (features @ weight.T + bias).argmax(dim=1).numpy()
    truth = np.array([int(row["imagenet_index"]) for row in rows])
    correct = int((predicted == truth).sum())
    assert correct >= 80, f"top-1 {correct}/100; timm's reference with its own transform is 89/100"

    normalised = backbone.encode_images(pixels[:4])
    torch.testing.assert_close(normalised.norm(dim=1), torch.ones(4))
