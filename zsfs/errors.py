"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

from collections.abc import Iterator


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
    names in the library (``k must be >= 1``) and as the command's flags in the CLI (``--k ...``)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render({}))

    def render(self, names: dict[str, str]) -> str:
        """The message with each parameter shown as ``names[parameter]`` (default: its own name)."""
        return self.template.format_map(_OwnName(names))


class _OwnName(dict):
    def __missing__(self, name: str) -> str:
        return name


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a message of ours (library messages can span pages)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) < 12:  # bare codes or words ("101", "'h'") say little without their type
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and every error it arose from (``raise ... from``, or raised while handling)."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
