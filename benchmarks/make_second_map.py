"""Build the two extra real-data checks of docs/fit.md beside ``../shared/bench/fashion-mnist``.

Both use a second map of the Fashion-MNIST classes to ImageNet concepts (for 8 of the 10 classes
partly other synsets than the shared folder's ``vocab-fashion.npz``, each class keeping at least
one of them; "single" = the first synset alone, so a weaker prompt):

- ``test``: the shared folder's features (10,000 test images) with this map: only
  ``vocab-fashion.npz`` is new; the other files are links to the shared folder.
- ``train``: 10,000 other real images (a seeded sample of the training split), embedded as the
  shared folder was (``../shared/bench/make_fashion_mnist.py``: the real ImageNet-pretrained
  ``tf_efficientnet_lite0``; its ImageNet head read as the zero-shot space), with this map.

    python benchmarks/make_second_map.py test ../shared/bench/fashion-mnist fm2
    python benchmarks/make_second_map.py train ../shared/bench/fashion-mnist fm-train \\
        --weights ../shared/models/tf_efficientnet_lite0.safetensors     # ~10-25 min on 2 cores
    python benchmarks/bench_quality.py --features fm2 --seeds 1 --draws 3

The images come from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
from pathlib import Path

import numpy as np

from harness import run

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SECOND_MAP = {  # ImageNet-1k indices per class; the first is the "single" prompt
    "T-shirt/top": [610, 639], "Trouser": [608, 842], "Pullover": [841], "Dress": [578, 614, 399],
    "Coat": [869, 568, 735], "Sandal": [774, 502], "Shirt": [834, 697], "Sneaker": [770, 630],
    "Bag": [748, 414, 893], "Ankle boot": [514],
}
IMAGES = Path("/usr/share/datasets/fashion-mnist")
TRAIN_SAMPLE, SAMPLE_SEED = 10_000, 1
SHARED_FILES = ("backbone.npy", "clip.npy", "images.csv", "vocab-imagenet.npz")


def second_map_vocabulary(out: Path) -> None:
    ensemble = np.zeros((len(CLASSES), 1000), np.float32)
    single = np.zeros((len(CLASSES), 1000), np.float32)
    for row, name in enumerate(CLASSES):
        ensemble[row, SECOND_MAP[name]] = 1 / np.sqrt(len(SECOND_MAP[name]))
        single[row, SECOND_MAP[name][0]] = 1
    np.savez(out / "vocab-fashion.npz", classes=np.array(CLASSES), single=single, ensemble=ensemble)


def idx_file(name: str) -> np.ndarray:
    """An array of the MNIST IDX format."""
    with gzip.open(IMAGES / name) as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def embed_train_sample(weights: Path, out: Path) -> None:
    import timm
    import torch
    from PIL import Image

    images, labels = idx_file("train-images-idx3-ubyte.gz"), idx_file("train-labels-idx1-ubyte.gz")
    picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(images), TRAIN_SAMPLE, replace=False))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(weights))).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    features, concepts = [], []
    with torch.inference_mode():
        for start in range(0, len(picked), 256):
            batch = torch.stack([transform(Image.fromarray(images[i]).convert("RGB"))
                                 for i in picked[start:start + 256]])
            pooled = model.forward_head(model.forward_features(batch), pre_logits=True)
            features.append(pooled.numpy())
            concepts.append(torch.softmax(model.get_classifier()(pooled), 1).sqrt().numpy())
            print(f"{start + len(batch)} / {len(picked)}", flush=True)
    np.save(out / "backbone.npy", np.concatenate(features).astype(np.float16))
    np.save(out / "clip.npy", np.concatenate(concepts).astype(np.float16))
    with open(out / "images.csv", "w") as handle:
        handle.write("path,label\n")
        handle.writelines(f'train/{i:05d}.png,"{CLASSES[labels[i]]}"\n' for i in picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", choices=["test", "train"])
    parser.add_argument("shared", type=Path, help="the shared feature folder (../shared/bench/fashion-mnist)")
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--weights", type=Path, help="tf_efficientnet_lite0 weights (train only)")
    args = parser.parse_args()
    if args.split == "train" and args.weights is None:
        parser.error("train needs --weights (../shared/models/tf_efficientnet_lite0.safetensors)")
    needed = [args.shared / name for name in (SHARED_FILES if args.split == "test" else SHARED_FILES[3:])]
    if args.split == "train":
        needed += [args.weights, IMAGES / "train-images-idx3-ubyte.gz", IMAGES / "train-labels-idx1-ubyte.gz"]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:  # before the folder is made: links to nothing, or an empty folder a rerun refuses
        images = " (Debian: apt-get install dataset-fashion-mnist)" if any(str(IMAGES) in path for path in missing) else ""
        parser.error(f"not found: {', '.join(missing)}{images}")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    args.out.mkdir(parents=True)
    try:
        if args.split == "test":
            for name in SHARED_FILES[:3]:
                os.symlink((args.shared / name).absolute(), args.out / name)
        else:
            embed_train_sample(args.weights, args.out)
        os.symlink((args.shared / SHARED_FILES[3]).absolute(), args.out / SHARED_FILES[3])
        second_map_vocabulary(args.out)
        print(f"written: {args.out} (bench_quality.py --features {args.out})")
    except BaseException:  # Ctrl-C in the long embedding too: no half-made folder for the next run to refuse
        shutil.rmtree(args.out)
        raise


if __name__ == "__main__":
    run(main)
