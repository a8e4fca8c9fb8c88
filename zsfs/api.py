"""The Python front door: the pipeline by name, as ``import zsfs`` offers it.

    import zsfs
    zsfs.extract("photos/", "photos.h5")                 # stage 1 (returns what it did)
    with zsfs.Store("photos.h5") as store:
        run = zsfs.fit(store, k=16)                      # stage 2: a FittedRun, in memory
    run.predictions                                      # polars DataFrame, one row per image
    run.save("runs/photos-k16")
    zsfs.load_run("runs/photos-k16").predict_images(["new.jpg"])
    zsfs.report("runs/photos-k16")                       # runs/photos-k16/report.html

``zsfs.extract``, ``zsfs.fit`` and ``zsfs.report`` are also the names of the modules that do the
work: calling those modules calls their function (see :func:`callable_module`), so all stay
importable as before. Errors name the parameters as given here (``k must be at least 1``).
"""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import sys
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from zsfs.runs import FittedRun
    from zsfs.store import Store


def fit(store: Store | str | Path, *, vocabulary: str | None = None,
        classes: list[str] | tuple[str, ...] | None = None, preset: str | None = None, **parameters) -> FittedRun:
    """Label and OOD-score every image of ``store`` (a :class:`zsfs.Store` or its path).

    ``classes``: some of the vocabulary's class names, the only ones to label with (the store's
    text embeddings serve: no CLIP model is loaded, so an imported store takes them too).

    The other keyword arguments are :class:`zsfs.fit.FitConfig`'s fields (``k=16``, ``epochs=...``), on top of
    ``preset`` ``"paper"``, ``"fast"`` or ``"paper-fast"`` [the defaults]; the values shown for them are
    the defaults', which a preset changes in part (docs/fit.md). The result has
    ``.predictions``, ``.metrics`` (None when the store has no labels), ``.config`` and ``.save(dir)``.
    """
    from zsfs.errors import ParameterError, check_parameter_type, refuse_unknown_parameters, shown_value
    from zsfs.fit.config import PARAMETER_TYPES, FitConfig
    from zsfs.fit.run import fit_store
    from zsfs.runs import FittedRun
    from zsfs.store.reader import Store, check_store_or_path

    check_store_or_path("store", store)
    if vocabulary is not None:
        check_parameter_type("vocabulary", vocabulary, str)
    if classes is not None and not (isinstance(classes, (list, tuple))
                                    and all(isinstance(name, str) for name in classes)):
        raise ParameterError(f"{{classes}} must be a list of the vocabulary's class names, not {shown_value(classes)}")
    presets = {None: {}, "paper": {"paper": True}, "fast": {"fast": True}, "paper-fast": {"paper": True, "fast": True}}
    if preset not in presets:
        raise ParameterError(f"{{preset}} must be one of paper, fast, paper-fast (or None), "
                             f"not {shown_value(preset)}")
    known = FitConfig.__dataclass_fields__
    refuse_unknown_parameters(parameters, ["vocabulary", "classes", "preset", *known], "fit")
    for name, value in parameters.items():  # from_options reads None as an option not given; here it was given
        if value is None:  # (seed=None read as seed 0, k=None as 16)
            check_parameter_type(name, value, PARAMETER_TYPES[known[name].type])
    config = FitConfig.from_options(**presets[preset], **parameters)
    # Values at their defaults are left out: a run's recorded parameters, given back to redo it,
    # hold every option of the other method so (the command line names only the options typed).
    defaults = {name: spec.default for name, spec in known.items()}
    unread = config.unread({name: value for name, value in parameters.items() if value != defaults[name]})
    if unread:  # not an error: one set of parameters can serve fits of both methods (as the CLI says too)
        warnings.warn(config.unread_note(unread), stacklevel=3)  # the caller's line, past the callable module
    if isinstance(store, Store):
        return FittedRun.from_fit(fit_store(store, config, vocabulary, classes), store)
    with Store(store) as opened:
        return FittedRun.from_fit(fit_store(opened, config, vocabulary, classes), opened)


def spelled_out(function: Callable, fields_of: type) -> inspect.Signature:
    """``function``'s signature with its ``**parameters`` written out as the dataclass ``fields_of``'s
    fields, keyword-only with their defaults: what help(), ``zsfs.fit?`` and completion show."""
    signature = inspect.signature(function)
    written = [inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=spec.default,
                                 annotation=getattr(builtins, spec.type, spec.type))
               for spec in dataclasses.fields(fields_of)]
    return signature.replace(parameters=[parameter for parameter in signature.parameters.values()
                                         if parameter.kind != parameter.VAR_KEYWORD] + written)


def callable_module(name: str, function: Callable, signature: inspect.Signature | None = None) -> None:
    """Make the module ``name`` callable as ``function``: ``zsfs.fit(...)`` while ``zsfs.fit`` stays the
    package that ``from zsfs.fit import FitConfig`` reads. (Python binds a submodule as an attribute
    of its parent when first imported, so a plain function named ``zsfs.fit`` would be replaced.)"""

    signature, called = signature or inspect.signature(function), name.rpartition(".")[2]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from zsfs.errors import bind_arguments

            bind_arguments(signature, called, args, kwargs)  # an unknown or missing argument: a ParameterError
            return function(*args, **kwargs)

    CallableModule.__call__.__doc__ = function.__doc__
    module = sys.modules[name]
    module.__class__ = CallableModule
    module.__signature__ = signature  # inspect.signature(zsfs.fit), and notebooks' zsfs.fit?
    # help(zsfs.fit) documents the module: the call comes first there.
    plain = signature.replace(parameters=[parameter.replace(annotation=inspect.Parameter.empty)
                                          for parameter in signature.parameters.values()],
                              return_annotation=inspect.Signature.empty)
    module.__doc__ = (f"Called as zsfs.{called}{plain}:\n\n{inspect.getdoc(function)}\n\n"
                      f"The module:\n\n{inspect.cleandoc(module.__doc__ or '')}")
