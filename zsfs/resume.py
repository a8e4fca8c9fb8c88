"""What identifies a store's shards, and an extract run over an existing store.

The identity that makes shards interchangeable with the ones a run would write (same listing,
models, weights, layout and pixel budget); whether an existing store is already finished as asked;
and, where it is not the same, which models or weights it was built with, said before any model
loads (a resume that named other models loaded, and maybe downloaded, the defaults only to be
refused)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zsfs.decode import DEFAULT_MAX_PIXELS
from zsfs.errors import StoreMismatchError, ZsfsError
from zsfs.models import backbone_as_recorded, clip_architecture, clip_as_recorded, offline_advice, weights_kind
from zsfs.names import counted
from zsfs.decode import SUFFIXES_ADDED
from zsfs.sources import ImageSource
from zsfs.store.schema import IMPORTED_WEIGHTS, shard_dir
from zsfs.store.identity import recorded_identity
from zsfs.store.writer import StoreWriter
from zsfs.weights import FILE, RANDOM

if TYPE_CHECKING:
    from zsfs.shard_embedder import EmbedSettings


def store_identity(source: ImageSource, clip_record: dict, backbone_record: dict, *, dtype: str,
                   max_pixels: int, earlier: dict | None = None) -> dict:
    """What makes shards interchangeable: same listing, same models and weights, same layout,
    same pixel budget (it decides which images are skipped, and at which scale large JPEGs are read).
    ``earlier``: the identity the store being resumed records, if any."""
    earlier = earlier or {}
    return {
        "source": str(source.location),
        "listing_sha256": source.digest(),
        "clip": _model_identity(clip_record, earlier.get("clip")),
        "backbone": _model_identity(backbone_record, earlier.get("backbone")),
        "dtype": dtype,  # the writer adds n_items and shard_size
        **budget_identity(max_pixels),
    }


def budget_identity(max_pixels: int) -> dict:
    """The pixel budget's part of a store's identity: only a budget other than the default is
    recorded, so that stores built before it was recorded match."""
    return {} if max_pixels == DEFAULT_MAX_PIXELS else {"max_pixels": max_pixels}


def _model_identity(record: dict, earlier: dict | None) -> dict:
    # A weights file may move between runs; its sha256 (kept) is what identifies it. A store built
    # before a tag's weights were fingerprinted (2026-12-03) resumes without the fingerprint.
    old_store = isinstance(earlier, dict) and "weights_fingerprint" not in earlier
    return {key: value for key, value in record.items()
            if key != "file" and not (old_store and key == "weights_fingerprint")}


def master_model_record(record: dict, identity: dict) -> dict:
    """The model record a master keeps: no fingerprint that its store's identity lacks (an older
    store resumed: its first shards were embedded with weights of unknown values)."""
    return record if "weights_fingerprint" in identity else {
        key: value for key, value in record.items() if key != "weights_fingerprint"}


def finished_as_requested(master: Path, settings: EmbedSettings, source: ImageSource, *, shard_size: int,
                          dtype: str, lock: bool = True) -> dict | None:
    """The identity of the existing store ``master`` when it already holds every image this run
    would embed, as these models would (every shard whole, a current master), judged without
    loading a model; None otherwise (the run then checks and writes as a first run does)."""
    recorded = recorded_identity(master)
    if not master.is_file() or not recorded:
        return None
    requested = store_identity(source, {}, {}, dtype=dtype, max_pixels=settings.max_pixels)
    requested.update(n_items=len(source.paths), shard_size=shard_size)
    if set(recorded) != set(requested) or any(recorded[key] != value for key, value in requested.items()
                                              if key not in ("clip", "backbone")):
        return None
    if not (clip_as_recorded(settings.clip_model, settings.clip_weights, recorded["clip"] or {})
            and backbone_as_recorded(settings.backbone, settings.backbone_weights, recorded["backbone"] or {})):
        return None
    with StoreWriter(master, recorded, n_items=len(source.paths), shard_size=shard_size, dtype=dtype,
                     lock=lock) as writer:
        # temporary files are another writer's to remove: without the lock one may be writing them now
        return recorded if writer.is_complete(remove_tmp=lock) else None


def recorded_by_name(master: Path, settings: EmbedSettings) -> tuple[str, ...]:
    """The models (``"clip"``, ``"backbone"``) that the store, or its first run's shards, loaded by the
    pretrained name this run asks for too: the run must load them so again, not from a file."""
    recorded = recorded_identity(master)
    return tuple(role for role in ("clip", "backbone") if _by_name(recorded.get(role))
                 and recorded[role]["weights"] == settings.model(role)[1])


def _by_name(record: dict | None) -> bool:
    """Whether a model record is of pretrained weights loaded by name (a tag), not a file, random
    weights or imported embeddings."""
    return (record or {}).get("weights") not in (None, FILE, RANDOM, IMPORTED_WEIGHTS)


def other_model_names(master: Path, settings: EmbedSettings) -> str:
    """Before the models load: ``"built with MODELS, this run asks for ...; pass ..."`` when the
    store (or its first run's shards) was built with other models, judged by name (the weights
    are compared once loaded); "" otherwise. A resume without the model options, of a store built
    with others, loaded (downloaded maybe) the default models only to be refused."""
    recorded = recorded_identity(master)
    built = {role: (recorded.get(role) or {}).get("name") for role in ("clip", "backbone")}
    try:
        requested = {"clip": clip_architecture(settings.clip_model), "backbone": settings.backbone}
    except ZsfsError:  # a name no model has: loading says so
        return ""
    differing = [role for role in built if built[role] is not None and built[role] != requested[role]]
    if not differing:
        return ""
    then = " and ".join(f"{'CLIP' if role == 'clip' else 'backbone'} {built[role]}" for role in differing)
    now = " and ".join(f"{requested[role]}" for role in differing)
    return (f"built with {then}, this run asks for {now}; pass the models it was built with to resume or update "
            "it (--clip-model, --backbone), or --overwrite to replace it")


def other_weights_by_name(master: Path, settings: EmbedSettings) -> str:
    """Before the models load: ``"built with the ... weights ..."`` when the store loaded a model by a
    pretrained name and this run asks for a weights file (the store records a name, not a file's
    sha256: a rerun must load it by name too) or, for CLIP, another tag; "" otherwise."""
    recorded = recorded_identity(master)
    for role in ("clip", "backbone"):
        if not _by_name(recorded.get(role)):
            continue
        flag, named, built = f"--{role}-weights", "CLIP" if role == "clip" else "backbone", recorded[role]
        name, asked = settings.model(role)
        kind = weights_kind(role, name, asked)
        if kind == FILE:
            return (f"built with the {named} weights {built['name']} / {built['weights']}, loaded by that name, and "
                    f"this run passes a file ({flag}): a store built so reloads them by name only, even where a file "
                    f"holds the same values; drop {flag}, or pass --overwrite to replace the store. "
                    f"{offline_advice(role, built['name'])}")
        if kind == "tag" and asked != built["weights"]:
            return (f"built with the {named} weights {built['name']} / {built['weights']}, this run asks for "
                    f"{built['name']} / {asked}; pass {flag} {built['weights']} to resume or update it, or "
                    "--overwrite to replace it")
    return ""


def new_suffixes_explain(error: StoreMismatchError, master: Path, source: ImageSource) -> StoreMismatchError:
    """``error``, or a clearer one when the store was built from this source as an earlier zsfs
    listed it: without the suffixes scans take since ``SUFFIXES_ADDED``, or with the hidden
    members of its tars (or those files came since)."""
    recorded = recorded_identity(master).get("listing_sha256")
    built = master if master.is_file() else shard_dir(master)  # a killed first run left only shards
    with_hidden = source.digest_with_hidden_members()
    if with_hidden is not None and recorded == with_hidden[0]:
        return StoreMismatchError(
            f"{built} was built with the {counted(with_hidden[1], 'hidden member')} (a name or folder starting with a dot, "
            "such as macOS's ._photo.jpg) that these tars hold: zsfs leaves them out since December 2026, as a "
            "folder scan leaves out hidden files. Pass --overwrite to embed the tars again without them, or keep "
            "the store as it is")
    earlier = source.digest_without_added_suffixes()
    if earlier is None or recorded != earlier[0]:
        return error
    added = len(source.paths) - earlier[1]
    return StoreMismatchError(
        f"{built} was built without the {counted(added, 'file')} of {', '.join(sorted(SUFFIXES_ADDED))} that this "
        "folder holds: zsfs reads these suffixes since December 2026 (or the files came since). Pass --overwrite to "
        "embed the whole folder again with them, or extract them into a store of their own")
