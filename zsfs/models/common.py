"""What loading either model shares: the identity a store compares, the errors and advice about
pretrained weights that do not come or do not load, close names for a misspelt one."""

from __future__ import annotations

import difflib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Container, Iterator, Sequence

from zsfs.errors import ModelLoadError, one_line
from zsfs.weights import (HUB_CACHE_ADVICE, BothWeightsMissingError, DamagedDownloadError, UnreadableCacheError,
                          WeightsDownloadError, checkpoint_reason, hub_cache_folder, unreadable_checkpoint,
                          unreadable_in_cache)


def as_identity(record: dict) -> dict:
    """A model record as a store's identity holds it: JSON values, no file path. Random weights
    are compared so, built: their values are their initialisation, which another torch, open_clip
    or timm may make otherwise (tests and benchmarks use them; nothing is read or downloaded)."""
    return json.loads(json.dumps({key: value for key, value in record.items() if key != "file"}))


@contextmanager
def by_name_only(why: str, roles: Container[str] = ("clip", "backbone")) -> Iterator[None]:
    """Pretrained weights of the ``roles`` (``"clip"``, ``"backbone"``) that a store recorded by name
    and that cannot be downloaded now: their error offers no file, which the store would refuse
    (``why`` says which store); other errors pass as they are."""
    try:
        yield
    except BothWeightsMissingError as error:
        if not {"clip", "backbone"} & set(roles):
            raise
        clip, backbone = (part.by_name_only(why) if part.role in roles else part
                          for part in (error.clip, error.backbone))
        raise ModelLoadError(f"{clip} Also, {backbone}") from None
    except WeightsDownloadError as error:
        if error.role not in roles:
            raise
        raise error.by_name_only(why) from None


def pretrained_error(role: str, weights: str, hub_id: str | None, error: Exception,
                     file_advice: str) -> ModelLoadError:
    """Pretrained weights that were downloaded (or found in the cache) and did not load: a file
    that cannot be read is a cut-short or damaged download; anything else is said as it is."""
    unreadable = unreadable_cache_error(role, weights, hub_id, file_advice)
    if unreadable is not None:  # not damaged: deleting the copy would be the wrong cure
        return unreadable
    if not unreadable_checkpoint(error):
        return ModelLoadError(f"cannot load the {weights}: {one_line(error)}")
    where = (f"the folder {hub_cache_folder(hub_id)} of the Hugging Face cache" if hub_id
             else "the downloaded file from its cache")
    return DamagedDownloadError(role, weights, checkpoint_reason(error), file_advice,
                                f"if the download was cut short or damaged, delete {where} so that they are downloaded "
                                "again (without a network: replace it with an intact copy from a machine that has them)")


def unreadable_cache_error(role: str, weights: str, hub_id: str | None,
                           file_advice: str) -> UnreadableCacheError | None:
    """The error for pretrained weights that did not load because this user may not read the cache's
    copy of ``hub_id`` (None where that is not why): asked only once loading failed, so a file of the
    copy that the loader does not read refuses nothing."""
    denied = unreadable_in_cache(hub_id) if hub_id else None
    if denied is None:
        return None
    return UnreadableCacheError(role, weights, denied, file_advice,
                                f"this user may not read it: have the cache's owner make it readable (chmod -R a+rX "
                                f"{hub_cache_folder(hub_id)}, and the folders above it searchable), or point HF_HOME "
                                "at a readable copy")


def hub_cache_advice() -> str:
    """How to work offline from the Hugging Face cache; where HF_HOME names the cache's hub/ folder
    itself (its models--* folders are there, and the hub looks in HF_HOME/hub), that slip first."""
    import huggingface_hub.constants as hub

    try:  # (a folder on the way that cannot be searched raises, on Python 3.11)
        if Path(hub.HF_HUB_CACHE).is_dir() or not any(Path(hub.HF_HOME).glob("models--*")):
            return HUB_CACHE_ADVICE
    except OSError:
        return HUB_CACHE_ADVICE
    return (f"HF_HOME ({hub.HF_HOME}) holds the models--* folders itself: point HF_HOME at the folder above it, "
            "or HF_HUB_CACHE at it.")


def built_by_name(store: str | os.PathLike | None) -> str:
    """Why weights reload by name only: the store (named where known) recorded them so."""
    return f"the store{f' {os.fspath(store)}' if store else ''} was built with them by name"


def close_names(name: str, candidates: Sequence[str]) -> str:
    """``" (close names: a, b)"``: up to three of ``candidates`` spelled like ``name``, for an unknown
    model name's error; "" when none is close."""
    lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    return f" (close names: {', '.join(lower[c] for c in close)})" if close else ""
