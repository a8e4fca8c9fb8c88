"""Class names into a store: read and checked (a list or a class file), embedded with the store's
CLIP model under both prompt sets, written as a named vocabulary (``zsfs text``; ``zsfs extract``
writes one the same way). Image data is never touched."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from zsfs.devices import check_device
from zsfs.errors import (ParameterError, ZsfsError, check_parameter_type, check_path, checked_arguments, literal,
                         shown_value)
from zsfs.models import cut_by_clip, encode_vocabulary, load_clip_from_record, same_text_to_clip
from zsfs.names import (check_class_names, counted, home_expanded, names_listed_in, pairs_text,
                        refuse_unseen_characters, some_names)
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.lists import read_class_file
from zsfs.store.extras import check_vocabulary_name, write_vocabulary
from zsfs.store.files import check_store_update, disk_error
from zsfs.store.locks import store_lock
from zsfs.store.reader import Store, check_store_or_path
from zsfs.store.schema import vocabulary_file
from zsfs.weights import refuse_imported, relocated


@checked_arguments
def add_vocabulary(
    store: str | Path | Store,
    classes: Sequence[str] | str | Path,
    name: str,
    *,
    clip_weights: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_classes: Callable[[int], None] | None = None,
    on_cut: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Embed class names with the CLIP model the store was built with; image data is untouched.

    ``clip_weights``: the recorded weights file at a new location (its sha256 must match).
    ``on_start(n)`` is called once the model is loaded with the number of classes,
    ``on_classes(n)`` as classes are embedded (progress); ``on_start(0)`` where the store holds
    these classes under ``name`` already (a rerun: nothing is written). ``on_cut(names)``, before they are
    embedded, with the names too long for CLIP (``cut_by_clip``: their ends are not embedded), when there are
    any. ``store`` may be an open ``Store``,
    as ``zsfs.fit`` takes one. Returns the class names written.
    """
    check_store_or_path("store", store)  # (Store's own check would name its "path")
    store_path = store.path if isinstance(store, Store) else Path(check_path("store", store))
    check_device(device)
    check_parameter_type("name", name, str)
    name = check_vocabulary_name(name)
    check_parameter_type("overwrite", overwrite, bool)  # "no" is true: it would replace the vocabulary
    with Store(store_path) as opened:
        record, data_dir, identity = dict(opened.clip_info), opened.data_dir, opened.identity
        name = opened.stored_vocabulary_name(name)
        held = opened.vocabulary(name) if name in opened.vocabulary_names() and not overwrite else None
    refuse_imported(record, "CLIP")  # before the class file is checked: no class file can be embedded then
    class_names = checked_classes(classes)
    if held is not None:
        if held.classes == class_names and held.prompt == SINGLE_PROMPT:  # this store's CLIP embedded them
            if on_start is not None:  # a rerun (after a kill, in a pipeline) has nothing to write, as extract's
                on_start(0)
            return class_names
        other = (f"with other classes ({some_names(list(held.classes), 5)})" if held.classes != class_names
                 else f"of these classes embedded otherwise (prompt {held.prompt!r})")
        raise ZsfsError(f"{store_path} already has a vocabulary {name!r} {other}; choose another --vocab or pass "
                        "--overwrite to replace it")
    check_store_update(Path(store_path), data_dir, vocabulary_file(data_dir, name))
    with store_lock(Path(store_path)):  # held while CLIP embeds: another writer is refused now, not this one at its end
        clip = load_clip_from_record(relocated(record, clip_weights, "CLIP"), device=device, store=store_path)
        refuse_same_text_to_clip(same_text_to_clip(clip.tokenizer, class_names))
        cut = cut_by_clip(clip.tokenizer, class_names) if on_cut is not None else []
        if cut:  # a long description loses its end unseen otherwise
            on_cut(cut)
        if on_start is not None:
            on_start(len(class_names))
        single, ensemble = encode_vocabulary(clip, class_names, on_classes=on_classes)
        # the store whose CLIP embedded them (review: one rebuilt before the lock was taken got them)
        save_vocabulary(Path(store_path), name, class_names, single, ensemble, overwrite=overwrite, identity=identity)
    return class_names


def refuse_same_text_to_clip(pairs: list[tuple[str, str]]) -> None:
    """A ``ZsfsError`` naming the class names CLIP reads as the same text (see ``same_text_to_clip``)."""
    if pairs:
        raise ZsfsError(f"CLIP reads {counted(len(pairs), 'pair')} of class names as the same tokens (its tokenizer "
                        f"ignores case, spacing and the Unicode form, and cuts long texts): "
                        f"{pairs_text(pairs, 10, with_count=False)}. It gives each pair one embedding and cannot tell "
                        "their images apart: list each class once.")


def save_vocabulary(master: Path, name: str, classes: list[str], single: np.ndarray, ensemble: np.ndarray, *,
                    overwrite: bool, identity: dict | None = None) -> None:
    try:
        write_vocabulary(master, name, classes, single, ensemble, prompt=SINGLE_PROMPT,
                         n_templates=len(ENSEMBLE_TEMPLATES), overwrite=overwrite, identity=identity)
    except OSError as error:
        raise disk_error(error, f"vocabulary {name!r} into {master}") from error


def checked_classes(classes: Sequence[str] | str | Path | None) -> list[str] | None:
    """The class names given (a list, or a class file), checked; None when none were given."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        listed = names_listed_in(classes) if isinstance(classes, str) else None
        if listed is not None and not Path(home_expanded(classes)).exists():
            raise ParameterError(f"{{classes}} {shown_value(classes)} names no class file; pass the class names as "
                                 f"a list: {literal(repr(listed))}")
        return read_class_file(classes)
    if not isinstance(classes, (list, tuple)) and not hasattr(classes, "tolist"):  # a number, bytes, a set...
        raise ParameterError(f"{{classes}} must be a list of class names or a class file's path, not "
                             f"{shown_value(classes)}")
    classes = list(classes.tolist() if hasattr(classes, "tolist") else classes)
    not_text = [name for name in classes if not isinstance(name, str)]
    if not_text:  # None, b"red" and 3 became the classes "None", "b'red'" and "3"
        raise ParameterError(f"{{classes}} must hold class names (str), not {shown_value(not_text[0])}")
    try:
        classes = check_class_names([name.strip() for name in classes], "the classes given")  # as a class file's lines
        refuse_unseen_characters(classes, "the classes given")
    except ZsfsError as error:  # names given twice, blank, invisible: the caller's list, unlike a class file's lines
        raise ParameterError(literal(str(error))) from None
    return classes
