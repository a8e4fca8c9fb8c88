"""Throughput of ``zsfs extract`` against its own limits, on the same images and models.

    (a) zsfs extract (library call; pipeline images/s, and end to end with loading + finalize)
    (b) a naive loop: decode and embed one image at a time, as the paper's scripts do
    (c) decode + preprocess only, through the same DataLoader, no models
    (d) the two models' forward passes alone, on pre-decoded batches

Example (CPU, both model settings)::

    python benchmarks/bench_extract.py --models tiny,small --n-images 300
    python benchmarks/bench_extract.py --models default --device cuda --precision bf16 --n-images 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from zsfs.devices import check_device
from zsfs.decode import ImageDecodeError
from zsfs.errors import ZsfsError
from zsfs.embedding import (AUTOCAST_DTYPES, DecodedImages, default_worker_niceness, default_workers, make_loader,
                            model_threads)
from zsfs.extract import extract
from zsfs.models import load_backbone, load_clip
from zsfs.sources import open_source
from zsfs.testing.images import write_photos
from zsfs.testing.models import TINY_BACKBONE, TINY_CLIP_CONFIG

from harness import at_least, at_least_one, note_machine, run

SETTINGS = {
    # name: (clip model, clip weights, backbone, backbone weights)
    "tiny": (str(TINY_CLIP_CONFIG), "random", TINY_BACKBONE, "random"),
    "small": ("ViT-B-32", "random", "tf_efficientnet_lite0", "random"),
    "default": ("ViT-B-32", "random", "vit_giant_patch14_clip_224.laion2b", "random"),
}


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def bench_extract(folder: Path, setting: tuple, args, workdir: Path) -> tuple[float, float]:
    clip_model, clip_weights, backbone, backbone_weights = setting
    marks: dict[str, float] = {}
    count = [0]

    def on_start(total: int) -> None:
        marks["start"] = time.perf_counter()

    def on_batch(n: int) -> None:
        count[0] += n
        marks["stop"] = time.perf_counter()

    begin = time.perf_counter()
    extract(folder, workdir / f"bench-{time.monotonic_ns()}.h5", clip_model=clip_model, clip_weights=clip_weights,
            backbone=backbone, backbone_weights=backbone_weights, device=args.device, precision=args.precision,
            batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size,
            on_start=on_start, on_batch=on_batch)
    end_to_end = rate(count[0], time.perf_counter() - begin)
    return rate(count[0], marks["stop"] - marks["start"]), end_to_end


def bench_naive(source, clip, backbone, device) -> float:
    """One image at a time: decode, preprocess, embed with each model (the reference scripts' loop);
    a file that does not decode is skipped, as extract skips it."""
    begin = time.perf_counter()
    with torch.inference_mode():
        for i in range(len(source.paths)):
            try:
                image = source.decode(i)
            except ImageDecodeError:
                continue
            clip.encode_images(clip.preprocess(image).unsqueeze(0).to(device)).cpu()
            backbone.encode_images(backbone.preprocess(image).unsqueeze(0).to(device)).cpu()
    return rate(len(source.paths), time.perf_counter() - begin)


def bench_decode(source, clip, backbone, args, workers: int) -> float:
    dataset = DecodedImages(source, clip.preprocess, backbone.preprocess)
    batches = [list(range(i, min(i + args.batch_size, len(dataset)))) for i in range(0, len(dataset), args.batch_size)]
    begin = time.perf_counter()
    n = 0
    loader = make_loader(dataset, batches, workers=workers, pin_memory=args.device == "cuda",
                         worker_niceness=default_worker_niceness(args.device))
    for batch in loader:
        n += len(batch.indices) + len(batch.failures)
    return rate(n, time.perf_counter() - begin)


def bench_forward(source, clip, backbone, args, device) -> tuple[float, float, float]:
    """(both models, CLIP alone, backbone alone) images/s on batches already on the device.

    The models run one after the other on each batch, so "both" is the harmonic sum of the two.
    """
    dataset = DecodedImages(source, clip.preprocess, backbone.preprocess)
    batches = [list(range(i, min(i + args.batch_size, len(dataset)))) for i in range(0, len(dataset), args.batch_size)]
    loaded = [tuple(pixels.to(device) for pixels in b.pixels)
              for b in make_loader(dataset, batches, workers=0, pin_memory=False)]
    n = sum(len(c) for c, _ in loaded)
    dtype = AUTOCAST_DTYPES[args.precision]

    def timed(model, which: int) -> float:
        sync(device)
        begin = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None
                                                    and device.type == "cuda"):
            for pixels in loaded:
                model.encode_images(pixels[which])
        sync(device)
        return rate(n, time.perf_counter() - begin)

    clip_only, backbone_only = timed(clip, 0), timed(backbone, 1)
    return 1 / (1 / clip_only + 1 / backbone_only), clip_only, backbone_only


def backbone_flops(backbone, device) -> float:
    """FLOPs of one backbone forward pass on one image (matmuls/convolutions, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.record.get("image_size", 224)
    size = size[-1] if isinstance(size, (list, tuple)) else size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pixels = torch.zeros(1, 3, size, size, dtype=torch.float32 if backbone.scaling is None else torch.uint8)
        backbone.encode_images(pixels.to(device))  # the dtype its preprocess gives
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def warm_up(clip, backbone, source, device) -> None:
    image = source.decode(0)
    with torch.inference_mode():
        for _ in range(2):
            clip.encode_images(clip.preprocess(image).unsqueeze(0).repeat(2, 1, 1, 1).to(device))
            backbone.encode_images(backbone.preprocess(image).unsqueeze(0).repeat(2, 1, 1, 1).to(device))
    sync(device)


def model_settings(text: str) -> list[str]:
    """An argparse type: comma-separated names of ``SETTINGS``, checked before any image is written."""
    names = text.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=model_settings, default="tiny,small",
                        help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--n-images", type=at_least_one, default=300, help="generated JPEGs [300]")
    parser.add_argument("--images", type=Path, help="use this folder instead of generated JPEGs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="fp32", choices=list(AUTOCAST_DTYPES),
                        help="the models' autocast precision (CUDA only, as in zsfs extract) [fp32]")
    parser.add_argument("--batch-size", type=at_least_one, default=64, help="[64]")
    parser.add_argument("--workers", type=at_least(0), help="DataLoader workers [default: zsfs's default]")
    parser.add_argument("--shard-size", type=at_least_one, default=50_000, help="[50,000]")
    parser.add_argument("--repeat", type=at_least_one, default=1, help="best of N interleaved runs of (a), (c), (d) [1]")
    parser.add_argument("--skip-naive", action="store_true", help="skip (b) (slow with big models)")
    args = parser.parse_args()
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")
    try:
        device = check_device(args.device)
    except ZsfsError as error:  # no such GPU here: one line, as zsfs says it
        parser.exit(1, f"bench_extract.py: {error}\n")
    if args.precision != "fp32" and device.type != "cuda":
        print(f"note: --precision {args.precision} applies on CUDA; on {device.type} the models run in fp32",
              file=sys.stderr)
    workers = default_workers(args.device) if args.workers is None else args.workers
    note_machine()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = args.images or workdir / "photos"
        if args.images is None:
            write_photos(folder, args.n_images)
        source = open_source(folder)
        print(f"{len(source.paths)} images from {folder if args.images else 'generated JPEGs'}; device {args.device}, precision {args.precision}, "
              f"batch {args.batch_size}, workers {workers}, torch threads {torch.get_num_threads()}, "
              f"best of {args.repeat}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        for name in args.models:
            setting = SETTINGS[name]
            clip = load_clip(setting[0], setting[1], device=args.device)
            backbone = load_backbone(setting[2], setting[3], device=args.device)
            warm_up(clip, backbone, source, device)
            b = float("nan") if args.skip_naive else bench_naive(source, clip, backbone, device)
            runs = []  # (a), (c), (d) interleaved, best of --repeat: other processes on the machine only slow runs down
            for _ in range(args.repeat):
                a_run = bench_extract(folder, setting, args, workdir)
                c_run = bench_decode(source, clip, backbone, args, workers)
                with model_threads(device):  # the threads extract gives the models on CPU
                    d_run = bench_forward(source, clip, backbone, args, device)
                runs.append((a_run, c_run, d_run))
            (a, a_end_to_end), _, _ = max(runs, key=lambda run: run[0][0])
            c = max(run[1] for run in runs)
            d, d_clip, d_backbone = max((run[2] for run in runs), key=lambda forward: forward[0])
            flops = backbone_flops(backbone, device)
            print(f"\n== {name}: CLIP {setting[0]} ({setting[1]}), backbone {setting[2]} ({setting[3]})")
            print(f"(a) zsfs extract          {a:9.1f} img/s   (end to end incl. loading+finalize: {a_end_to_end:.1f})")
            print(f"(b) naive per-image loop  {b:9.1f} img/s")
            print(f"(c) decode + preprocess   {c:9.1f} img/s")
            print(f"(d) forward passes        {d:9.1f} img/s   (CLIP alone {d_clip:.1f}, backbone alone {d_backbone:.1f})")
            print(f"ratios: a/b = {a / b:.2f}   a/c = {a / c:.2f}   a/d = {a / d:.2f}   a/min(c,d) = {a / min(c, d):.2f}")
            print(f"backbone: {flops / 1e9:.2f} GFLOP/image -> {flops * d_backbone / 1e12:.3f} TFLOP/s alone, "
                  f"{flops * a / 1e12:.3f} TFLOP/s inside extract")


if __name__ == "__main__":
    run(main)
