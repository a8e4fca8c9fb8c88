"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

import errno
import functools
import inspect
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ParamSpec, TypeVar

from zsfs.names import abbreviated, home_expanded

P, R = ParamSpec("P"), TypeVar("R")


class ZsfsError(Exception):
    """An error whose message tells the user what went wrong and what to do about it."""


class StoreError(ZsfsError):
    """A store is missing, damaged, or not what the caller expected."""


class StoreMismatchError(StoreError):
    """An existing store or shard was built from another source or other models."""


class ModelLoadError(ZsfsError):
    """A model name is unknown or its weights cannot be found, downloaded or loaded."""


class ParameterError(ZsfsError):
    """A bad argument. The message names parameters as ``{name}`` fields, shown as the Python
    names in the library (``k must be at least 1``) and as the command's flags in the CLI (``--k ...``).
    Text from outside (paths, values, names) goes into the template through :func:`literal`."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render({}))

    def render(self, names: dict[str, str]) -> str:
        """The message with each parameter shown as ``names[parameter]`` (default: its own name)."""
        return self.template.format_map(_OwnName(names))


def literal(value: object) -> str:
    """``value`` as text for a :class:`ParameterError` template, shown as it is: a path or a value
    holding ``{x}`` is not a parameter field (nor a format error)."""
    return str(value).replace("{", "{{").replace("}", "}}")


def shown_value(value: object) -> str:
    """A wrong argument as a :class:`ParameterError` shows it (:func:`literal`), on one line: an
    array as its dtype and shape (its repr spans lines and pages), a string or path whole (the
    part that is wrong may be at its end), other values' repr with its lines joined and cut at 200
    characters."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if isinstance(shape, tuple) and shape and dtype is not None:  # numpy, torch; not their scalars, np.float64(3.5)
        return literal(f"an array of {dtype} of shape {shape}")
    text = repr(value)
    if not isinstance(value, (str, os.PathLike)):
        text = " ".join(text.split())
        text = abbreviated(text, 200)
    return literal(text)


PARAMETER_KINDS = {int: (numbers.Integral, "a whole number"), float: (numbers.Real, "a number"),
                   bool: (bool, "True or False"), str: (str, "a string")}


def check_parameter_type(name: str, value: object, kind: type) -> None:
    """ParameterError unless ``value`` is a ``kind`` (int, float, bool or str; numpy numbers count,
    but a bool is not a number: ``k=True`` is a mistake, not 1)."""
    accepted, described = PARAMETER_KINDS[kind]
    if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
        raise ParameterError(f"{{{name}}} must be {described}, not {shown_value(value)}")


def check_callbacks(**callbacks: object) -> None:
    """ParameterError unless each of ``callbacks`` (``on_batch=...``) is None or callable (a
    number failed deep inside, at its first call)."""
    for name, value in callbacks.items():
        if value is not None and not callable(value):
            raise ParameterError(f"{{{name}}} must be a function (or None), not {shown_value(value)}")


def check_path(name: str, value: object) -> str:
    """``value`` as a path's text, with a leading ``~`` read as the home folder (as the command line
    reads it: :func:`zsfs.names.home_expanded`); ParameterError unless it is a ``str`` or an
    ``os.PathLike`` (``bytes`` are not: iterated, they read as numbers), or for the empty string, which
    ``Path`` reads as the current folder (``Path("")`` is already ".": only a ``str`` can be checked)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ParameterError(f"{{{name}}} must be a path (a str or pathlib.Path), not {shown_value(value)}")
    if isinstance(value, str) and value == "":
        raise ParameterError(f"{{{name}}} is an empty path (an unset variable?); give a path")
    return home_expanded(value)


def refuse_unknown_parameters(given: "Iterable[str]", taken: "Sequence[str]", called: str) -> None:
    """ParameterError naming the first of ``given`` that ``called`` does not take (a TypeError
    from Python otherwise, or, for options passed on, one from deep inside)."""
    unknown = [name for name in given if name not in taken]
    if unknown:
        raise ParameterError(f"unknown parameter {shown_value(unknown[0])}; {called} takes {literal(', '.join(taken))}")


def bind_arguments(signature: "inspect.Signature", called: str, args: tuple, kwargs: dict) -> None:
    """ParameterError for an unknown or missing argument of ``called`` (Python's TypeError
    otherwise), naming what it takes."""
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        taken = ", ".join(("**" if parameter.kind == parameter.VAR_KEYWORD else "") + parameter.name
                          for parameter in signature.parameters.values() if parameter.name != "self")
        raise ParameterError(f"{literal(error)}; {called} takes {literal(taken)}") from None


def checked_arguments(function: "Callable[P, R]") -> "Callable[P, R]":
    """``function`` with :func:`bind_arguments` first: its bad calls raise ParameterError, as the
    front doors' do, so that ``except zsfs.ZsfsError`` catches every mistake of a caller."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        bind_arguments(signature, function.__qualname__.removesuffix(".__init__"), args, kwargs)
        return function(*args, **kwargs)

    return checked


def check_choice(name: str, value: object, choices: "tuple[str, ...]") -> None:
    """ParameterError unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ParameterError(f"{{{name}}} must be one of {', '.join(choices)}, not {shown_value(value)}")


def check_at_least(name: str, value: int | None, least: int) -> None:
    """ParameterError unless ``value`` is a whole number >= ``least`` (None passes: chosen for the machine)."""
    if value is not None:
        check_parameter_type(name, value, int)
        if value < least:
            raise ParameterError(f"{{{name}}} must be at least {least}, not {value}")


MAX_SEED = 2**31 - 1
"""The largest seed: faiss takes a 32-bit one, so every command's seed has this range."""


def check_seed(value: object) -> None:
    """ParameterError unless ``value`` is a whole number from 0 to :data:`MAX_SEED`."""
    check_parameter_type("seed", value, int)
    if not 0 <= value <= MAX_SEED:
        raise ParameterError(f"{{seed}} must be between 0 and {MAX_SEED}, not {value}")


class _OwnName(dict):
    def __missing__(self, name: str) -> str:
        return name


def as_sentence(text: str) -> str:
    """``text`` ended by one full stop, for a sentence of ours to follow (a library's message or
    :func:`one_line`'s "..." may end with its own: it read "...].. Check that")."""
    return text if text.endswith((".", "!", "?")) else text + "."


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a message of ours (library messages can span pages)."""
    text = " ".join(str(error).split())
    if not text:  # an error with no message: its type is all there is to say
        text = type(error).__name__
    elif len(text) < 12:  # bare codes or words ("101", "'h'") say little without their type
        text = f"{type(error).__name__}: {text}"
    if len(text) <= limit:
        return text
    space = text.rfind(" ", 0, limit - 2)  # a word ending where the room does is whole
    # at the last space, unless that drops much of the room: a word cut in two reads as a typo
    cut = text[:space] if space >= limit // 2 else text[: limit - 3]
    return cut.rstrip(" ,;:.") + "..."


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and every error it arose from (``raise ... from``, or raised while handling)."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def is_disk_full(error: BaseException | None) -> bool:
    """True if ``error`` or one it arose from reports a full disk, a quota or a file-size limit.
    h5py raises RuntimeError with the C errno in its message, so look at the whole chain."""
    for cause in error_chain(error):
        message = str(cause).lower()
        if (getattr(cause, "errno", None) in DISK_FULL_ERRNOS or "no space left" in message
                or "errno = 28" in message or "errno = 27" in message or "file too large" in message):
            return True
    return False


def out_of_open_files(error: BaseException) -> bool:
    """This process or a decoding worker reached the open-files limit: EMFILE or ENFILE, or torch's
    words when its workers could no longer hand a batch over ("Too many open files. Communication
    with the workers is no longer possible", a RuntimeError)."""
    return any(getattr(cause, "errno", None) in (errno.EMFILE, errno.ENFILE)
               or "too many open files" in str(cause).lower() for cause in error_chain(error))


def shared_memory_full(error: BaseException) -> bool:
    """A decoding worker could not hand its batch over through /dev/shm: torch says "shared
    memory" or names its /dev/shm file ("</torch_...>") with a full-disk errno, or, when a worker
    died of it (SIGBUS), "out of shared memory"."""
    messages = "\n".join(map(str, error_chain(error)))
    return "out of shared memory" in messages or (
        is_disk_full(error) and any(text in messages for text in ("shared memory", "</torch_")))
