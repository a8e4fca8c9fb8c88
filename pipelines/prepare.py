"""Turn each paper dataset into a folder of class subfolders that ``zsfs extract`` reads.

Every function takes the data root and returns ``DATA_ROOT/<dataset>/images``; the folder
name of each class is its prompt word (``zsfs extract`` uses the subfolder names as labels
and as the vocabulary). Public downloaders (torchvision) are used where they still work;
for Stanford Cars and ImageNet the files must be fetched by hand, and the error says how.
A folder is written under a temporary name and renamed when complete, so an interrupted
preparation is redone, never half-used.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from zsfs.errors import ZsfsError
from zsfs.outputs import new_folder

PREPARED_MARKER = ".zsfs-prepared"
"""Hidden file (ignored by image scans) that marks a completely written folder."""


def images_folder(data_root: Path, dataset: str) -> Path:
    return Path(data_root) / dataset / "images"


def is_prepared(folder: Path) -> bool:
    return (Path(folder) / PREPARED_MARKER).is_file()


def cifar10(data_root: Path) -> Path:
    """CIFAR-10 test set (10,000 images, 10 classes), downloaded by torchvision."""
    return _cifar(data_root, "cifar10")


def cifar100(data_root: Path) -> Path:
    """CIFAR-100 test set (10,000 images, 100 fine classes), downloaded by torchvision."""
    return _cifar(data_root, "cifar100")


def caltech101(data_root: Path) -> Path:
    """Caltech-101: all images of the 101 categories; BACKGROUND_Google is not a class."""
    return _caltech(data_root, "caltech101", "Caltech-101", "Caltech101", "101_ObjectCategories", "BACKGROUND_Google",
                    _caltech101_name, "unpack 101_ObjectCategories.tar.gz from https://data.caltech.edu/records/mzrjq-6wc02")


def caltech256(data_root: Path) -> Path:
    """Caltech-256: all images of the 256 categories; 257.clutter is not a class."""
    return _caltech(data_root, "caltech256", "Caltech-256", "Caltech256", "256_ObjectCategories", "257.clutter",
                    _caltech256_name, "unpack 256_ObjectCategories.tar from https://data.caltech.edu/records/nyy15-4j048")


def _caltech(data_root: Path, dataset: str, title: str, downloader: str, categories_folder: str, not_a_class: str,
             rename: Callable[[str], str], by_hand: str) -> Path:
    """Both Caltech sets: torchvision's downloader, then one subfolder per category."""
    raw = Path(data_root) / dataset / "download"

    def fill(out: Path) -> None:
        import torchvision.datasets

        categories = raw / dataset / categories_folder
        if not categories.is_dir():
            download = getattr(torchvision.datasets, downloader)
            _download(lambda: download(str(raw), download=True), title, f"{by_hand} into {categories.parent}")
        _link_class_files(out, _category_files(categories, skip={not_a_class}, rename=rename))

    return _write_once(images_folder(data_root, dataset), fill)


def stanford_cars(data_root: Path) -> Path:
    """Stanford Cars test set (8,041 images, 196 classes) from files placed by hand."""
    base = Path(data_root) / "cars" / "download" / "stanford_cars"

    def fill(out: Path) -> None:
        _require_manual(
            "Stanford Cars",
            [base / "cars_test", base / "cars_test_annos_withlabels.mat", base / "devkit" / "cars_meta.mat"],
            "Its original download is gone: get the test images, cars_test_annos_withlabels.mat and the devkit "
            "from a mirror (e.g. the Kaggle copies of the dataset)")
        from torchvision.datasets import StanfordCars

        dataset = StanfordCars(str(base.parent), split="test", download=False)
        class_names = [_folder_name(name) for name in dataset.classes]
        # torchvision keeps (path, class index) pairs in ``_samples``; it has no public listing.
        _link_class_files(out, ((Path(path), class_names[target]) for path, target in dataset._samples))

    return _write_once(images_folder(data_root, "cars"), fill)


def imagenet(data_root: Path) -> Path:
    """ImageNet validation set (50,000 images, 1,000 classes) from the archives placed by hand."""
    raw = Path(data_root) / "imagenet" / "download"

    def fill(out: Path) -> None:
        unpacked = (raw / "meta.bin").is_file() and (raw / "val").is_dir()  # torchvision's own layout
        if not unpacked:
            _require_manual("ImageNet", [raw / "ILSVRC2012_img_val.tar", raw / "ILSVRC2012_devkit_t12.tar.gz"],
                            "Downloads need an account: log in at https://image-net.org and download them")
        from torchvision.datasets import ImageNet

        dataset = ImageNet(str(raw), split="val")  # unpacks and sorts val/ by class on its first use
        class_names = imagenet_class_names(dataset.wnids, dataset.classes)
        _link_class_files(out, ((Path(path), class_names[target]) for path, target in dataset.samples))

    return _write_once(images_folder(data_root, "imagenet"), fill)


def imagenet_class_names(wnids: list[str], synonyms: list[tuple[str, ...]]) -> list[str]:
    """One unique folder name per ImageNet class: its first synonym where that is unique.

    A few first synonyms repeat (two "crane"s, two "maillot"s); those take their first synonym
    that no other class uses, or the first synonym followed by the WordNet id.
    """
    first_counts = Counter(names[0] for names in synonyms)
    taken = {name for name, count in first_counts.items() if count == 1}
    result = []
    for wnid, names in zip(wnids, synonyms, strict=True):
        if first_counts[names[0]] == 1:
            name = names[0]
        else:
            name = next((other for other in names[1:] if other not in taken and other not in first_counts),
                        f"{names[0]} {wnid}")
            taken.add(name)
        result.append(_folder_name(name))
    return result


def _cifar(data_root: Path, dataset: str) -> Path:
    raw = Path(data_root) / dataset / "download"

    def fill(out: Path) -> None:
        from torchvision.datasets import CIFAR10, CIFAR100

        loader = CIFAR10 if dataset == "cifar10" else CIFAR100
        data = _download(lambda: loader(str(raw), train=False, download=True), dataset.upper(),
                         f"place the python-version archive from https://www.cs.toronto.edu/~kriz/cifar.html in {raw}")
        _write_arrays(out, data.data, np.asarray(data.targets), [_folder_name(name) for name in data.classes])

    return _write_once(images_folder(data_root, dataset), fill)


def _write_once(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` into a temporary folder and rename it to ``folder``; skip if already done."""
    if is_prepared(folder):
        return folder
    if folder.exists():
        raise ZsfsError(f"{folder} exists but is not a finished preparation (no {PREPARED_MARKER}); "
                        f"remove it and rerun")
    with new_folder(folder) as tmp:
        fill(tmp)
        (tmp / PREPARED_MARKER).write_text("prepared by zsfs pipelines\n")
    return folder


def _download(load: Callable, title: str, manual: str):
    try:
        return load()
    except Exception as error:  # network errors come in many types; all mean the same here
        raise ZsfsError(f"could not download {title} ({type(error).__name__}: {error}). "
                        f"Without the downloader: {manual}, then rerun.") from None


def _require_manual(title: str, needed: list[Path], how: str) -> None:
    """Fail with the missing files and how to get them; check scipy (torchvision reads .mat with it)."""
    missing = [path for path in needed if not path.exists()]
    if missing:
        listed = ", ".join(str(path) for path in missing)  # one line, as every error (a newline showed as \x0a)
        raise ZsfsError(f"{title} must be downloaded by hand; missing: {listed}. {how}, put them there and "
                        f"rerun; or pass an already sorted class-subfolder folder with --images DIR.")
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise ZsfsError(f"preparing {title} reads MATLAB files with scipy: pip install scipy") from None


def _write_arrays(out: Path, images: np.ndarray, targets: np.ndarray, class_names: list[str]) -> None:
    from PIL import Image

    for name in class_names:
        (out / name).mkdir()
    for i, (pixels, target) in enumerate(zip(images, targets)):
        Image.fromarray(pixels).save(out / class_names[target] / f"{i:05d}.png")


def _category_files(categories: Path, *, skip: set[str], rename: Callable[[str], str]) -> Iterable[tuple[Path, str]]:
    from zsfs.decode import IMAGE_EXTENSIONS

    folders = sorted(entry for entry in categories.iterdir() if entry.is_dir() and entry.name not in skip)
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS and not file.name.startswith("."):
                yield file, rename(folder.name)


def _link_class_files(out: Path, files: Iterable[tuple[Path, str]]) -> None:
    """Hard-link (or copy, across file systems) each file into ``out/<class>/``."""
    for source, class_name in files:
        target = out / class_name / source.name
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


CALTECH101_NAMES = {"Faces": "face", "Faces_easy": "face close up", "Leopards": "leopard",
                    "Motorbikes": "motorbike", "airplanes": "airplane"}
"""Caltech-101 folders whose names are not a plain class word."""


def _caltech101_name(folder: str) -> str:
    return CALTECH101_NAMES.get(folder, folder.replace("_", " ").lower())


def _caltech256_name(folder: str) -> str:
    # "145.motorbikes-101" -> "motorbikes"; hyphens separate words except in a few real words.
    name = re.sub(r"^\d+\.", "", folder)
    name = re.sub(r"-101$", "", name)
    return name if name in {"t-shirt", "yo-yo"} else name.replace("-", " ")


def _folder_name(name: str) -> str:
    """A class name usable as a folder name and as a prompt word."""
    return re.sub(r"\s+", " ", name.replace("_", " ").replace("/", "-")).strip()
