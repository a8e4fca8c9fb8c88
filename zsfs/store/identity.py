"""Reading the identity a store records of the run that built it, and why another run is not that
run: the refusal of a store or shard built from other images, models or settings, in words that
say which differ and what to pass, or what an unfinished store was started with."""

from __future__ import annotations

import math
from pathlib import Path

from zsfs.errors import StoreMismatchError
from zsfs.store import schema
from zsfs.store.extras import planned_vocabularies
from zsfs.store.hdf5 import DAMAGED_FILE_ERRORS, open_hdf5, read_identity


def refuse_another_listing(master: Path, listing: dict) -> None:
    """Before long work (loading models, reading embeddings): refuse an existing ``master`` (or
    the shards a killed first run left) whose recorded identity has another listing, with the
    message the writer would give later.

    ``listing``: the identity keys known before the work (``source``, ``listing_sha256``,
    ``n_items``; extract's layout and pixel budget too). A master that cannot be read is left to the writer."""
    found = recorded_identity(master)
    if found and any(found.get(key) != value for key, value in listing.items()):
        raise mismatch_error(master if master.is_file() else schema.shard_dir(master), found, {**found, **listing})


def recorded_identity(master: Path) -> dict:
    """The identity ``master`` records or, before there is one (a first run was killed), the first
    finished shard's; empty when neither can be read."""
    shards = schema.shard_dir(master)
    for path in [master] if master.is_file() else sorted(shards.glob(schema.SHARD_GLOB)):
        try:
            with open_hdf5(path) as file:
                found = read_identity(file)
        except DAMAGED_FILE_ERRORS:  # unreadable, damaged, or an identity that is not JSON
            continue  # the writer says what is wrong with a master, and rewrites a damaged shard
        if found and isinstance(found, dict):  # (JSON of another shape: no identity of ours)
            return found
    return {}


def unfinished_run(master: Path) -> str:
    """What the shards of an unfinished store record of the run that started it (source, models,
    layout, shard files there), as ``"; it was started from ..."``: the rerun that finishes it must ask
    for the same; "" when no shard records it in the shape zsfs writes."""
    identity = recorded_identity(master)
    n_items, shard_size = identity.get("n_items"), identity.get("shard_size")
    if not (isinstance(n_items, int) and isinstance(shard_size, int) and n_items > 0 and shard_size > 0):
        return ""

    records = {role: identity[role] if isinstance(identity.get(role), dict) else {} for role in ("clip", "backbone")}
    imported = records["clip"].get("weights") == schema.IMPORTED_WEIGHTS  # (--clip-name, --backbone-name)

    def model(role: str, named: str) -> str:
        record = records[role]
        if record.get("weights") == schema.IMPORTED_WEIGHTS:
            return f"{named} embeddings {record.get('name')} imported from {record.get('imported_from')}"
        config = " (a model-config file)" if "config" in record else ""
        weights = record.get("file") or record.get("weights")  # a file by its path: the rerun passes it
        return f"{named} {record.get('name')}{config} / {weights}"

    max_pixels = identity.get("max_pixels")  # recorded only when not the default
    options = [f"--shard-size {shard_size}", *([f"--max-pixels {max_pixels}"] if max_pixels else []),
               f"--dtype {identity.get('dtype')}"]
    shard_files = sorted(schema.shard_dir(master).glob(schema.SHARD_GLOB))
    if imported and _holds_labels(shard_files):  # a folder's labels come with it; an import's from an option
        options.append("labels from a --label-column")
    planned, _ = planned_vocabularies(schema.shard_dir(master), identity)
    if planned:
        options.append(f"--vocab {', '.join(planned)}")
    return (f"; it was started from {identity.get('source')} with {model('clip', 'CLIP')}, "
            f"{model('backbone', 'backbone')}, {', '.join(options[:-1])} and {options[-1]}, and {len(shard_files)} of "
            f"its {math.ceil(n_items / shard_size)} shard files are there")


def _holds_labels(shard_files: list[Path]) -> bool:
    """Whether the first readable of ``shard_files`` holds labels (every shard of a store or none)."""
    for path in shard_files:
        try:
            with open_hdf5(path) as file:
                return schema.LABEL in file
        except DAMAGED_FILE_ERRORS:  # a damaged shard: the next one tells
            continue
    return False


def mismatch_error(path: Path, found: dict | None, expected: dict) -> StoreMismatchError:
    """The refusal of a store or shard file whose recorded identity is not this run's."""
    return StoreMismatchError(f"{path} was built from another source, other models or other settings "
                              f"({describe_difference(found, expected)}); keep it and choose another output, or "
                              "pass --overwrite to replace it")


def _without(record: dict, key: str) -> dict:
    return {name: value for name, value in record.items() if name != key}


def _differing(then: dict, now: dict) -> list[str]:
    """The keys whose values differ between two records (one missing counts), sorted."""
    return sorted(key for key in set(then) | set(now) if then.get(key) != now.get(key))


def _short(value) -> str:
    """A recorded value in a message: digests cut to 12 characters."""
    text = str(value)
    return text[:12] + "..." if len(text) > 16 and all(c in "0123456789abcdef" for c in text) else text


def _changed_files(then: object, now: object) -> str:
    """Which of an import's files (``[name, size, time, sha256]`` each) differ: "changed since the
    store was built (clip.npy: other content)", not two lists of hashes and times."""
    recorded = {entry[0]: entry for entry in then if isinstance(entry, list) and entry} if isinstance(then, list) else {}
    changes = []
    for entry in now if isinstance(now, list) else []:
        known = recorded.pop(entry[0], None)
        if known is None:
            changes.append(f"{entry[0]}: new")
        elif known[1:2] != entry[1:2] and all(isinstance(sizes[1], int) for sizes in (known, entry)):
            changes.append(f"{entry[0]}: {known[1]:,} bytes then, {entry[1]:,} now")
        elif len(known) < 4:  # recorded before the sha256 was (2026-12-03): only its time tells
            changes.append(f"{entry[0]}: modified since (the store recorded its time, not its content)")
        elif known != entry:
            changes.append(f"{entry[0]}: other content")
    changes += [f"{name}: gone" for name in recorded]
    return f"changed since the store was built ({'; '.join(changes) or 'its files differ'})"


def describe_difference(found: dict | None, expected: dict) -> str:
    if found is None:
        return "it records no identity"
    keys = _differing(found, expected)
    if not keys:
        return "identity differs"
    text = "differs in " + ", ".join(keys)
    if "source" in keys:  # e.g. photos.txt, then photos.csv: both name photos.h5 by default
        text += f"; it was built from {found.get('source')}, this run reads {expected.get('source')}"
    elif "listing_sha256" in keys:  # the commonest case: files were added, removed or renamed
        then, now = found.get("n_items"), expected.get("n_items")
        counted_both = isinstance(then, int) and isinstance(now, int)  # a foreign or edited identity may lack them
        text += (f"; the source lists {now:,} files now, {then:,} when the store was built"
                 if counted_both and then != now else
                 "; the source's file names or labels changed since the store was built")
        # a user adding a few images expects an append
        text += "; files cannot be added to a store: --overwrite embeds every file again, and zsfs predict " \
                "labels new images with a fitted run"
    elif "max_pixels" in keys:  # recorded when not the default (and only since 2026-12-02)
        then, now = found.get("max_pixels"), expected.get("max_pixels")
        built = (f"--max-pixels {then:,}" if then else
                 "the default --max-pixels (or by a zsfs from before 2026-12-02, which did not record it)")
        text += f"; it was built with {built}, this run uses " + (f"--max-pixels {now:,}" if now else "the default")
    records = [key for key in keys if isinstance(found.get(key), dict) and isinstance(expected.get(key), dict)]
    for key in records:
        then, now = found[key], expected[key]
        if _without(then, "imported_from") == _without(now, "imported_from"):  # the same embeddings, moved
            text += (f"; its {key} embeddings were imported from {then['imported_from']}, this run reads "
                     f"{now['imported_from']}")
        elif _without(then, "imported_files") == _without(now, "imported_files"):  # the same files, written again
            text += f"; its {key} embeddings {_changed_files(then.get('imported_files'), now.get('imported_files'))}"
        elif _without(then, "weights_fingerprint") == _without(now, "weights_fingerprint"):  # a tag's weights
            text += (f"; it was built by an earlier zsfs, which did not record the values of its {key} weights"
                     if then.get("weights_fingerprint") is None else
                     f"; its {key} weights {now['name']} / {now['weights']} had other values (the cache holds other "
                     "weights under that name now)")
        else:  # say which parts of the model differ: another model, other weights, other preprocessing
            text += f"; its {key} differs in " + ", ".join(
                f"{part} ({_short(then.get(part))} then, {_short(now.get(part))} now)" for part in _differing(then, now))
    layout = [f"--{key.replace('_', '-')} {found[key]}" for key in ("shard_size", "dtype")
              if key in keys and found.get(key) is not None]
    if layout:  # a resume with other options: say which to pass
        text += f"; it was built with {' '.join(layout)} (pass the same to resume it)"
    return text
