"""Where model weights come from and how a later run proves it has the same ones.

A weights file is identified by its sha256; random weights by a fixed seed plus a fingerprint of
the initial tensors (so a library version that initialises differently is caught, not trusted).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import traceback
from contextlib import contextmanager, suppress
from urllib.parse import urlparse
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from zsfs.errors import ModelLoadError, error_chain, one_line
from zsfs.digests import unchanged_file_sha256
from zsfs.names import home_expanded
from zsfs.store.schema import IMPORTED_WEIGHTS

RANDOM = "random"
DEFAULT = "default"
FILE = "file"
RANDOM_SEED = 0
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
HUB_CACHE_ADVICE = ("Without a network, point HF_HOME at a copy of the Hugging Face cache of a machine that "
                    "downloaded them (~/.cache/huggingface by default); zsfs then reads them from there.")


class WeightsDownloadError(ModelLoadError):
    """Pretrained weights known by name that could be neither downloaded nor found in the cache;
    ``role`` is ``"clip"`` or ``"backbone"``, the model's key in a store's identity; ``cache_advice``
    says how to fill the cache they come from offline. Its message offers a local file as the other way
    out; :meth:`by_name_only` is the error where a file is none (weights a store recorded by name
    reload by that name)."""

    def __init__(self, role: str, weights: str, reason: str, file_advice: str, cache_advice: str = HUB_CACHE_ADVICE):
        self.role, self.weights, self.reason = role, weights, reason
        self.file_advice, self.cache_advice = file_advice, cache_advice
        super().__init__(self._message())

    def _message(self) -> str:
        return (f"could not download the {self.weights} ({self.reason}). {self.cache_advice} Or pass a local file: "
                f"{self.file_advice}")

    def __reduce__(self):  # pickled whole (a Ray worker's error reaches the driver so)
        return type(self), (self.role, self.weights, self.reason, self.file_advice, self.cache_advice)

    def by_name_only(self, why: str) -> ModelLoadError:
        """The same failure where ``why`` (a store recorded these weights by name) rules a file out: a
        file is refused there, even one of the same values, so offering it would lead nowhere."""
        return ModelLoadError(f"could not download the {self.weights} ({self.reason}); {why}, so zsfs loads them "
                              f"by that name only, from the cache, not from a file. {self.cache_advice}")


class BothWeightsMissingError(WeightsDownloadError):
    """Neither model's pretrained weights could be had (an air-gapped machine, an empty cache): one
    error names both, so that both are fetched at once (said one at a time, each cost the user a
    round trip through a cluster's file transfer). ``role`` is the first's; ``zsfs.models.by_name_only``
    takes each apart."""

    def __init__(self, clip: WeightsDownloadError, backbone: WeightsDownloadError):
        self.clip, self.backbone = clip, backbone
        ModelLoadError.__init__(self, self._message())
        self.role = clip.role

    def _message(self) -> str:
        clip, backbone = self.clip, self.backbone
        if not (type(clip) is type(backbone) is WeightsDownloadError and clip.cache_advice == backbone.cache_advice):
            return f"{clip} Also, {backbone}"  # each with its own cure
        which = (f"the {clip.weights} nor the {backbone.weights} ({clip.reason})" if clip.reason == backbone.reason
                 else f"the {clip.weights} ({clip.reason}) nor the {backbone.weights} ({backbone.reason})")
        return (f"could not download {which}. {clip.cache_advice} Or pass local files: "
                f"{backbone.file_advice.rstrip('.')} and {clip.file_advice}")

    def __reduce__(self):
        return type(self), (self.clip, self.backbone)


class DamagedDownloadError(WeightsDownloadError):
    """Pretrained weights known by name whose download (in the cache) cannot be read: cut short or
    damaged. The cure is in the cache (``cache_advice``); a file is the other way out, as for a
    download that failed, and none where a store recorded them by name (:meth:`by_name_only`)."""

    def _message(self) -> str:
        return (f"cannot read the downloaded {self.weights} ({self.reason}); {self.cache_advice}; or pass a local "
                f"file: {self.file_advice}")

    def by_name_only(self, why: str) -> ModelLoadError:
        return ModelLoadError(f"cannot read the downloaded {self.weights} ({self.reason}); {why}, so zsfs loads them "
                              f"by that name only, from the cache, not from a file: {self.cache_advice}.")


class UnreadableCacheError(DamagedDownloadError):
    """Pretrained weights whose copy in the Hugging Face cache this user may not read (a cache shared
    on a cluster, filled by another account): the cure is the cache's permissions, not a download nor
    deleting it (as for a damaged one); a file is the other way out."""

    def _message(self) -> str:
        return (f"cannot read the Hugging Face cache for the {self.weights} ({self.reason}); "
                f"{self.cache_advice}; or pass a local file: {self.file_advice}")

    def by_name_only(self, why: str) -> ModelLoadError:
        return ModelLoadError(f"cannot read the Hugging Face cache for the {self.weights} ({self.reason}); "
                              f"{why}, so zsfs loads them by that name only, from the cache, not from a file: "
                              f"{self.cache_advice}.")


def init_fingerprint(model: torch.nn.Module, n_values: int = 4096) -> str:
    """sha256 over every tensor's shape and first ``n_values`` values: cheap even for ViT-G. It
    identifies random weights (``init_fingerprint``) and pretrained ones, which are known by name
    only (``weights_fingerprint``)."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        head = tensor.detach().flatten()[:n_values].float().cpu().numpy()
        digest.update(f"{key}{tuple(tensor.shape)}".encode())
        digest.update(np.ascontiguousarray(head).tobytes())
    return digest.hexdigest()


@contextmanager
def seeded_init() -> Iterator[None]:
    """Random initialisation under a fixed seed, without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


@contextmanager
def hub_offline_unless_reachable(timeout: float = 3.0) -> Iterator[None]:
    """Downloads from the Hugging Face hub, or only its local cache when the hub is unreachable.

    On an air-gapped machine huggingface_hub retries each file for about a minute; offline mode
    makes a cached file load at once and a missing one fail at once.
    """
    import huggingface_hub.constants as hub

    endpoint = urlparse(hub.ENDPOINT)  # HF_ENDPOINT: an internal mirror, often on a port of its own
    if hub.HF_HUB_OFFLINE or (endpoint.hostname and _reachable(endpoint.hostname, _port(endpoint), timeout)):
        yield
        return
    hub.HF_HUB_OFFLINE = True  # huggingface_hub reads this constant on every request
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def offline_and_uncached() -> str:
    """Why pretrained weights from the hub did not come offline (``hub_offline_unless_reachable``), in
    words: the hub's own error is a page of advice on connections."""
    import huggingface_hub.constants as hub

    set_offline = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # (huggingface_hub reads both)
                   if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")]
    offline = f"{set_offline[0]} is set" if set_offline else f"{hub_address('')} cannot be reached"
    return f"{offline}, and the Hugging Face cache ({hub.HF_HUB_CACHE}) does not hold them"


def hub_address(repo: str) -> str:
    """Where the hub serves ``repo`` from, as messages name it: ``huggingface.co/timm/x``, or
    the mirror ``HF_ENDPOINT`` names (``mirror.internal:8080/api/hf/timm/x``; never its password)."""
    import huggingface_hub.constants as hub

    endpoint = urlparse(hub.ENDPOINT)
    if not endpoint.hostname:
        return f"{hub.ENDPOINT}/{repo.strip('/')}".rstrip("/")
    port = _given_port(endpoint)
    port = f":{port}" if port else ""
    return f"{endpoint.hostname}{port}{endpoint.path.rstrip('/')}/{repo.strip('/')}".rstrip("/")


def hub_cache_folder(hub_id: str) -> Path:
    """The Hugging Face cache's folder of the repository ``hub_id`` names (``org/name``, also with a
    ``@revision`` or, as open_clip's tags may, a file name after it: ``org/name/pytorch_model.bin``)."""
    import huggingface_hub.constants as hub

    repository = "/".join(hub_id.split("@")[0].strip("/").split("/")[:2])
    return Path(hub.HF_HUB_CACHE) / f"models--{repository.replace('/', '--')}"


def unreadable_in_cache(hub_id: str) -> str | None:
    """``"PATH: Permission denied"`` for the first part of the cache's copy of ``hub_id`` this user
    may not read (its folder or one above, its refs, its snapshots' files and the blobs they link
    to); None where all can be read, or there is no copy. The hub and the libraries tell such a
    copy as missing ("No such file", "cannot find the requested files in the local cache")."""
    folder = hub_cache_folder(hub_id)
    try:
        os.stat(folder)
    except PermissionError as error:  # a folder above cannot be searched: name the first one
        blocked = next((parent for parent in reversed(folder.parents) if not os.access(parent, os.X_OK)),
                       folder.parent)
        return f"{blocked}: {error.strerror}"
    except OSError:
        return None  # no copy at all
    if not os.access(folder, os.X_OK):  # named itself, not as its refs/ that cannot be listed then
        return f"{folder}: {os.strerror(errno.EACCES)}"
    denied: list[OSError] = []
    for part in ("refs", "snapshots"):
        for root, _, files in os.walk(folder / part, onerror=denied.append):
            for name in files:
                try:
                    open(os.path.join(root, name), "rb").close()  # through a snapshot's link to its blob
                except OSError as error:
                    denied.append(error)
    denied = [error for error in denied if isinstance(error, PermissionError)]
    return f"{denied[0].filename}: {denied[0].strerror}" if denied else None


def _given_port(endpoint) -> int | None:
    try:
        return endpoint.port
    except ValueError:  # malformed (99999, "abc"): huggingface_hub says what is wrong when it is used
        return None


def _port(endpoint) -> int:
    """The endpoint's port: its own, else its scheme's."""
    return _given_port(endpoint) or (80 if endpoint.scheme == "http" else 443)


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def existing_file(weights: str, what: str, flag: str) -> Path | None:
    """The weights file if it exists and can be read, by the name that tells its format (see
    :func:`_named_by_format`); None if ``weights`` does not look like a path."""
    path = Path(home_expanded(weights))
    try:
        is_folder, is_file = path.is_dir(), path.is_file()
    except OSError as error:  # a folder on the way that cannot be searched (Python 3.11 raises, not False)
        raise ModelLoadError(f"cannot read {what} weights file {path}: {error.strerror}") from None
    if is_folder:
        held: list[Path] = []
        with suppress(OSError):  # the checkpoints it holds, safetensors first (walkthrough: a made-up name)
            held = sorted((file for file in path.iterdir() if file.suffix.lower() in CHECKPOINT_SUFFIXES),
                          key=lambda file: (file.suffix.lower() != ".safetensors", file.name))
        example = held[0] if held else path / "model.safetensors"
        raise ModelLoadError(f"{what} weights {path} is a folder; pass the weights file in it ({flag} "
                             f"{example}{'' if held else ', for example'}).")
    if is_file:
        try:
            path.open("rb").close()
        except OSError as error:  # said here: the libraries' own reasons mislead (safetensors: "No such file")
            raise ModelLoadError(f"cannot read {what} weights file {path}: {error.strerror}") from None
        if path.stat().st_size == 0:
            raise ModelLoadError(f"{what} weights file {path} is empty (an interrupted download or copy?)")
        return _named_by_format(Path(os.path.abspath(path)))
    if os.sep in weights or path.suffix.lower() in CHECKPOINT_SUFFIXES or path.is_symlink():
        raise _not_found(path, what, flag)
    return None


def _named_by_format(path: Path, max_links: int = 40) -> Path:
    """``path``, or the first link on its way to the file whose name tells the format (the
    libraries go by the suffix): a cache's ``snapshots/REV/model.safetensors`` leads to a blob
    without one; ``current -> vit.safetensors`` has none itself."""
    for _ in range(max_links):
        if path.suffix.lower() in CHECKPOINT_SUFFIXES or not path.is_symlink():
            break
        path = Path(os.path.abspath(path.parent / os.readlink(path)))
    return path


def _not_found(path: Path, what: str, flag: str) -> ModelLoadError:
    broken = _broken_link(path)
    if broken is not None:  # `ls` lists it: "not found" reads as a mistyped path
        return ModelLoadError(f"{what} weights file {path} is a link that leads to no file ({broken}); mend the link, "
                              f"or pass {flag} the weights file itself.")
    return ModelLoadError(f"{what} weights file {path} not found; check the {flag} path.")


def _broken_link(path: Path) -> str | None:
    """Why the link ``path`` leads nowhere ("a link loop", "its target X does not exist"); None
    where ``path`` is no link."""
    try:
        if not path.is_symlink():
            return None
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a link loop"
        return f"its target {os.path.realpath(path)} does not exist" if error.errno == errno.ENOENT else error.strerror
    return None


def relocated(record: dict, new_file: str | Path | None, what: str) -> dict:
    """``record`` with its weights file at ``new_file`` (moved since the store was built; its
    sha256 is checked on loading); ``record`` itself when ``new_file`` is None."""
    if new_file is None or record.get("weights") == IMPORTED_WEIGHTS:  # weights_from_record explains imports
        return record
    flag = f"--{what.lower()}-weights"
    if record.get("weights") == RANDOM:
        raise ModelLoadError(f"the {what} model of the store was built with weights 'random', not a file; drop {flag}")
    if record.get("weights") != FILE:
        from zsfs.models import offline_advice  # (zsfs.models imports this module)

        # A tag is recorded by its name and its values, not a file's sha256: it comes from the cache.
        raise ModelLoadError(f"the {what} model of the store was built with the pretrained weights "
                             f"{record.get('name')} / {record.get('weights')}, which zsfs loads by that name, not "
                             f"from a file; drop {flag}. {offline_advice(what.lower(), str(record.get('name')))}")
    path = existing_file(str(new_file), what, flag)
    if path is None:  # a bare name that is no file
        raise _not_found(Path(home_expanded(new_file)), what, flag)
    return {**record, "file": str(path)}


def weights_from_record(record: dict, what: str) -> str:
    """The ``weights`` argument that reloads a record; a file must still have its sha256."""
    refuse_imported(record, what)
    weights = record["weights"]
    if weights is None or record.get("name") is None:  # a store written by hand, without them
        raise ModelLoadError(f"the store records no {what} model name or weights, so zsfs cannot load the model "
                             "its embeddings came from; embed new images with the tool that made them")
    if weights != FILE:
        return weights
    file = Path(record["file"])
    if not file.is_file():
        raise ModelLoadError(
            f"the {what} weights file {file} that the store was built with is missing; restore it "
            f"at that path, or pass its new location with --{what.lower()}-weights PATH (its sha256 "
            "is checked against the store's record)."
        )
    found = unchanged_file_sha256(file)
    if found != record["sha256"]:  # the digests: to find the right copy among several (sha256sum)
        raise ModelLoadError(
            f"the {what} weights file {file} is not the one the store was built with (its sha256 is "
            f"{found[:16]}..., the store's {str(record['sha256'])[:16]}...); pass the original file, or rebuild the "
            "store."
        )
    return str(file)


def refuse_imported(record: dict, what: str) -> None:
    """ModelLoadError when the record's embeddings came from another tool (``zsfs import``):
    zsfs has no model to recompute them with (checked before any long work)."""
    if record["weights"] == IMPORTED_WEIGHTS:
        instead = ("embed the new images with that tool and classify their features in Python with "
                   "`zsfs.load_run(RUN_DIR).predict(features)`" if what == "backbone" else
                   "embed the class names with that tool and import the store again with them (`zsfs import ... "
                   "--vocab NAME=FILE.npz`)")
        raise ModelLoadError(
            f"the store's {what} embeddings were imported (`zsfs import`) from another tool, so zsfs "
            f"does not have the model that made them ({record.get('name')!r}) to embed with; {instead}, or rebuild "
            "the store from the images with `zsfs extract`."
        )


def check_same_weights(loaded: dict, recorded: dict, what: str) -> None:
    """A model reloads only with the weights it was recorded with: random ones initialised
    identically by this installation, pretrained ones (a tag, known by name) with the same values
    (the cache may hold newer weights under the name, or another node's cache other ones). Files
    are checked by their sha256 before loading (``weights_from_record``)."""
    if recorded["weights"] == RANDOM and loaded.get("init_fingerprint") != recorded.get("init_fingerprint"):
        raise ModelLoadError(
            f"the store's {what} model {recorded['name']} was randomly initialised, and this "
            "installation initialises it differently (other torch/open_clip/timm version?), so its "
            "features cannot be reproduced. Use a weights file for work you want to reload."
        )
    recorded_values = recorded.get("weights_fingerprint")  # older stores lack it: nothing to check against
    if recorded_values is not None and loaded.get("weights_fingerprint") != recorded_values:
        raise ModelLoadError(
            f"the {what} weights {recorded['name']} / {recorded['weights']} loaded here are not the ones the store "
            "was built with (their values differ: the cache holds other weights under that name, or another "
            "timm/open_clip version names their tensors otherwise); restore the cache (HF_HOME) and versions the "
            "store was built with, or rebuild the store."
        )


def checkpoint_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a checkpoint, by name (safetensors: read from the header only)."""
    try:
        if file.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        import warnings

        from timm.models import load_state_dict

        with warnings.catch_warnings():  # torch warns of a TorchScript archive before refusing it
            warnings.simplefilter("ignore", UserWarning)
            return {key: tuple(value.shape) for key, value in load_state_dict(str(file)).items()}
    except Exception as error:  # pickle, zip, safetensors header errors: not a checkpoint
        raise not_a_checkpoint(file, error) from None


_CLIP_TEXT_TOWER = ("text_projection", "token_embedding", "text")
"""First parts of the tensor names of a CLIP checkpoint's text tower (open_clip's own, or a hub
text model's ``text.*``): an image model's file has none."""


def the_other_models_checkpoint(file: Path, role: str) -> str | None:
    """Where a weights file that does not fit the model of ``role`` (``"clip"``, ``"backbone"``) is
    the other model's kind, the advice that says so (a user with both files, named alike, swapped
    them, and was told to check the architecture); else None."""
    try:
        names = checkpoint_shapes(file)
    except ModelLoadError:
        return None
    is_clip = any(name.split(".")[0] in _CLIP_TEXT_TOWER for name in names)
    if role == "clip" and not is_clip:
        return ("It holds no text tower, so it is no CLIP checkpoint: an image model's weights (for "
                "--backbone-weights?).")
    if role == "backbone" and is_clip:
        return ("It is a whole CLIP checkpoint, text tower included (for --clip-weights?); as a backbone, timm "
                "reads one with the CLIP image tower of its architecture (--backbone vit_base_patch32_clip_224 for "
                "a ViT-B-32's, say).")
    return None


def not_a_checkpoint(file: Path, error: Exception) -> ModelLoadError:
    """The error for a weights file that could not be read as tensors, with the reason in words."""
    written_as = _format_by_content(file)
    if written_as is not None and (written_as == ".safetensors") != (file.suffix.lower() == ".safetensors"):
        kind = "a safetensors file" if written_as == ".safetensors" else "a torch file"  # a hub blob, a renamed copy
        named = f"named {file.suffix!r}" if file.suffix else "without a suffix"
        return ModelLoadError(f"cannot read {file} as a checkpoint: it is {kind} {named}, and the libraries zsfs loads "
                              f"through read a file by its suffix; rename it, or link to it, as "
                              f"{file.with_suffix(written_as).name} (its sha256, which a store records, stays the same)")
    return ModelLoadError(f"cannot read {file} as a checkpoint ({checkpoint_reason(error)}); pass a .safetensors or "
                          "torch .pth/.bin file saved from this model.")


def _format_by_content(file: Path) -> str | None:
    """".safetensors" or ".pt" as a weights file's first bytes tell (safetensors: the header's
    length, then its JSON's "{"; torch: a zip archive, or a pickle of the legacy format), else None."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    if len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return ".safetensors"
    return ".pt" if head.startswith((b"PK\x03\x04", b"\x80")) else None


_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")  # torch's allocator, in C
_CHECKPOINT_READERS = ("torch/serialization.py", "torch/_weights_only_unpickler.py", "/safetensors/")


def unreadable_checkpoint(error: BaseException) -> bool:
    """Whether loading weights failed in reading the file (torch.load, safetensors: a cut-short
    download, a file of something else), not in fitting its tensors to the model, nor for memory."""
    for cause in error_chain(error):
        if isinstance(cause, MemoryError) or any(text in str(cause).lower() for text in _OUT_OF_MEMORY):
            return False
        frames = traceback.extract_tb(cause.__traceback__)
        if frames and any(reader in frames[-1].filename.replace(os.sep, "/") for reader in _CHECKPOINT_READERS):
            return True
    return False


def checkpoint_reason(error: Exception) -> str:
    """Why a file could not be read as a checkpoint, in words: torch's own text is "KeyError: 101" for a text file,
    and advice to retry with ``weights_only=False``, which no option here can take."""
    import pickle

    if "TorchScript" in str(error):
        return ("a TorchScript archive, as OpenAI's original CLIP files are, which zsfs does not load: use the "
                "weights as open_clip publishes them (open_clip_pytorch_model.bin on the Hugging Face hub)")
    if "Unsupported global" in str(error):  # torch's safe loader met a class (timm's wrapper keeps the text)
        return "a pickled Python object, such as a whole model saved with torch.save(model), not its tensors"
    if any(isinstance(cause, (KeyError, pickle.UnpicklingError)) for cause in error_chain(error)):
        return "its content is no tensors saved by torch or safetensors"
    return one_line(error)  # a truncated zip or safetensors header, an unreadable file: their own words
