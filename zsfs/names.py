"""File names as the operating system gives them: bytes, which need not be UTF-8.

Python hands undecodable bytes over as lone surrogates (PEP 383, ``surrogateescape``), so a
``str`` path from ``os.walk`` always reopens its file. The store keeps each name's exact bytes
(:func:`name_bytes`); outputs that must be valid UTF-8 text (parquet, CSV, JSON, class names
derived from folder names) get :func:`utf8_text`, which writes each undecodable byte as ``\\xNN``.
"""

from __future__ import annotations

from collections.abc import Iterable


def name_bytes(name: str | bytes) -> bytes:
    """The exact bytes of a file name (UTF-8 for every name that is valid UTF-8)."""
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def utf8_text(name: str) -> str:
    """``name`` as valid UTF-8 text: undecodable bytes written as ``\\xNN`` (lossy, for display)."""
    return name_bytes(name).decode("utf-8", "backslashreplace")


def utf8_texts(names: Iterable[str]) -> list[str]:
    return [utf8_text(name) for name in names]
