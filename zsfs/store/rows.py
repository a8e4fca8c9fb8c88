"""The rows a store holds: finite, not all zero (an embedding has a direction), of unit L2 norm;
and reading a selection of them from a dataset.

One rule for every way rows come in: extract skips an image whose features break it, import and
the writer refuse such rows, ``FittedRun.predict`` refuses them as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from zsfs.errors import ParameterError, ZsfsError, literal, one_line
from zsfs.names import counted, described_array

if TYPE_CHECKING:
    import h5py

NORM_TOLERANCE = 1e-3  # float16 rounding moves a unit row's norm by ~1e-4
SCAN_ROWS = 65_536
"""Rows read at a time by :func:`unusable_row_numbers` (bounded memory over memory-mapped inputs)."""


_MAGNITUDE_BITS = {np.dtype(np.float16): (np.uint16, 0x7FFF, 0x7C00),
                   np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000),
                   np.dtype(np.float64): (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}
"""Native IEEE floats: (same-width unsigned view, mask of the magnitude bits, the magnitude of infinity)."""


def usable_rows(features: np.ndarray) -> np.ndarray:
    """(n,) bool: rows that are finite and not all zero."""
    bits = _MAGNITUDE_BITS.get(features.dtype)
    if bits is None or features.ndim != 2 or not features.shape[1] or not features.flags.c_contiguous:
        return np.isfinite(features).all(axis=1) & features.any(axis=1)
    # The same test on the bits, in one integer pass (5-7x faster than isfinite and any, two passes of
    # float16 arithmetic: shard writes and import checks ran it over every row): an IEEE float's
    # magnitude bits order it by absolute value, infinity and NaN above every finite value, 0 (and -0) below.
    unsigned, magnitude, infinity = bits
    largest = np.bitwise_and(features.view(unsigned), unsigned(magnitude)).max(axis=1)
    return (largest < infinity) & (largest > 0)


def unusable_row_numbers(features: np.ndarray, spans: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Ascending numbers of the rows of ``features`` that are not :func:`usable_rows`, among the
    ``(start, stop)`` row spans given (None: all rows), read :data:`SCAN_ROWS` at a time."""
    spans = [(0, len(features))] if spans is None else spans
    found = [np.flatnonzero(~usable_rows(np.asarray(features[block : min(block + SCAN_ROWS, stop)]))) + block
             for start, stop in spans for block in range(start, stop, SCAN_ROWS)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def unusable_rows_text(count: int, first: int) -> str:
    """``"2 rows are zero or not finite (first: row 57, counted from 0)"``: what every refusal says."""
    return f"{counted(count, 'row')} {'is' if count == 1 else 'are'} zero or not finite (first: row {first}, counted from 0)"


def refuse_unusable_rows(features: dict[str, np.ndarray], spans: Sequence[tuple[int, int]] | None) -> None:
    """A ``ZsfsError`` naming the first array of ``features`` (name -> rows) that has rows, among
    ``spans`` (None: all), that are not :func:`usable_rows`; ``normalise_rows`` would refuse them
    only once the shards before them were written."""
    for name, values in features.items():
        bad = unusable_row_numbers(values, spans)
        if len(bad):
            them = "it" if len(bad) == 1 else "them"
            raise ZsfsError(f"{name}: {unusable_rows_text(len(bad), int(bad[0]))}; fix or drop {them} (with the same "
                            "rows of the other inputs); nothing was written or removed")


def normalise_rows(values: np.ndarray, what: str, first_row: int = 0) -> np.ndarray:
    """Rows scaled to unit L2 norm; rows already unit-norm (to float16 precision) are returned
    as they are, without a copy. Zero or non-finite rows are an error, never silently kept; it
    counts rows from ``first_row``, the position of ``values[0]`` in the whole input."""
    if values.ndim != 2:
        raise ZsfsError(f"{what}: expected a 2-d array (rows, dim), got shape {values.shape}")
    with np.errstate(over="ignore"):  # float64 rows of 1e300 become infinite in float32: redone below
        norms = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float32, casting="unsafe"))
    retry = ~np.isfinite(norms) | (norms == 0)
    bad, retried = retry, bool(retry.any())
    if retried:  # squares overflow (float32 above ~1e19) or vanish (below ~1e-23): those rows divided by
        # their largest value first, so that their norm is in [1, sqrt(dim)] at any finite scale
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero or infinite row: NaN, refused below
            scaled = values[retry].astype(np.float64)
            scaled /= np.abs(scaled).max(axis=1, keepdims=True)
            scaled_norms = np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
        norms = norms.astype(np.float64)
        norms[retry] = scaled_norms
        bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise ZsfsError(f"{what}: {unusable_rows_text(int(bad.sum()), first_row + int(np.argmax(bad)))}")
    if not retried and np.all(np.abs(norms - 1) <= NORM_TOLERANCE):
        return values
    with np.errstate(over="ignore", invalid="ignore"):  # the rescaled rows' quotients are replaced below
        unit = (values / norms[:, None]).astype(np.result_type(values.dtype, np.float32), copy=False)
    if retried:
        unit[retry] = scaled / scaled_norms[:, None]
    return unit


SPARSE_ROWS_PER_BLOCK = 256  # fewer wanted rows than this in a block: point selection, else read the span
READ_BLOCK = 65536


def read_rows(data: h5py.Dataset, rows: slice | np.ndarray | None) -> np.ndarray:
    """``data[rows]`` for ``Store.read``'s row selections."""
    if rows is None:
        return data[:]
    if isinstance(rows, slice):
        try:  # here, not in h5py: its errors read as damage (zsfs.store.hdf5.read_errors)
            rows.indices(len(data))
        except (TypeError, ValueError) as error:
            raise ParameterError(f"{{rows}}: {literal(error)} ({literal(repr(rows))})") from None
        if rows.step is None or rows.step > 0:  # h5py reads no other step
            return data[rows]
        rows = np.arange(len(data))[rows]
    try:  # here, not in the read: numpy's errors there read as damage
        rows = np.asarray(rows)
    except (TypeError, ValueError) as error:  # ragged lists
        raise ParameterError(f"{{rows}}: {literal(one_line(error))}") from None
    if rows.dtype != bool and not np.issubdtype(rows.dtype, np.integer) and rows.size:  # 1.9 read as row 1
        raise ParameterError(f"{{rows}} must be None, a slice, whole-number row ids or a boolean mask, not an array "
                             f"of {literal(rows.dtype)}")
    if rows.dtype == bool:
        if rows.shape != (len(data),):
            raise ParameterError(f"{{rows}}: a boolean mask of shape {rows.shape} for {len(data):,} rows")
        rows = np.flatnonzero(rows)
    if rows.dtype.kind == "u" and rows.size and rows.max() > np.iinfo(np.int64).max:  # would wrap to negative ids
        raise ParameterError(f"{{rows}}: row id {int(rows.max())} is out of range for {len(data):,} rows")
    given = rows.astype(np.int64, copy=False)
    rows = np.where(given < 0, given + len(data), given)
    if rows.size and (rows.min() < 0 or rows.max() >= len(data)):
        outside = given[(rows < 0) | (rows >= len(data))].flat[0]  # as given: -10001, not -1
        raise ParameterError(f"{{rows}}: row id {outside} is out of range for {len(data):,} rows")
    wanted, order = np.unique(rows, return_inverse=True)
    return gather_rows(data, wanted)[order.reshape(rows.shape)]  # numpy's shapes: one row id, one row


def gather_rows(data: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``data[rows]`` for sorted unique ``rows``, one read per touched block.

    Blocks with few wanted rows use point selection; dense blocks read the covering span and
    pick in memory (h5py point selection is slow for many points).
    """
    out = np.empty((len(rows), *data.shape[1:]), dtype=data.dtype)
    blocks = rows // READ_BLOCK
    bounds = np.flatnonzero(np.diff(blocks)) + 1
    for part in np.split(np.arange(len(rows)), bounds) if len(rows) else []:
        wanted = rows[part]
        if len(wanted) < SPARSE_ROWS_PER_BLOCK:
            out[part] = data[wanted]
        else:
            first = int(wanted[0])
            out[part] = data[first : int(wanted[-1]) + 1][wanted - first]
    return out


def text_embedding_rows(values: np.ndarray, what: str, shape: tuple[int, int]) -> np.ndarray:
    """``values`` as unit float rows; ZsfsError when they are not real numbers (integers were always
    taken), not of ``shape`` (classes, CLIP dim: said first, as a cut-off width can leave zero
    rows), or a row is zero or not finite."""
    real = np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
    if not real or values.ndim != 2:  # text, booleans, complex numbers (their imaginary part was dropped)
        raise ZsfsError(f"{what} must be a (classes, CLIP dim) array of numbers, not {described_array(values)}")
    if values.shape != shape:
        raise ZsfsError(f"{what} has shape {values.shape}, expected ({shape[0]} classes, {shape[1]} = the CLIP "
                        "embedding dim)")
    return normalise_rows(values, what)
