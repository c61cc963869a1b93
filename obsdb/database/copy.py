"""PostgreSQL's binary COPY format, built with numpy: bulk loads without a Python object per row.

``COPY table (columns) FROM STDIN (FORMAT BINARY)`` takes a header
(:data:`PGCOPY_HEADER`), then per row a 16-bit field count and, per field, a 32-bit byte
length (-1: NULL) and the value in network byte order, then a trailer
(:data:`PGCOPY_TRAILER`). :func:`encode_copy_rows` lays the rows out in a numpy
structured array of fixed width (big-endian fields, each preceded by its length) and
drops the bytes that variable-length values (shorter text, NULLs) do not use with one
boolean mask, so the cost is a few numpy passes over the columns whatever the number of
rows. psycopg 3's ``Copy.write`` sends the bytes as they are, several times faster than
``Copy.write_row``, which builds a tuple and converts every value in Python.

Binary COPY does not convert types: each :class:`CopyColumn` must have the kind of its
table column (``bigint`` is ``int8``, ``integer`` ``int4``, ``real`` ``float4``,
``double precision`` ``float8``, ``boolean`` ``bool``, ``real[]`` ``float4[]``), or
PostgreSQL rejects the data (or, for two types of one width, misreads it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KINDS", "PGCOPY_HEADER", "PGCOPY_TRAILER", "CopyColumn", "copy_binary", "encode_copy_rows"]

PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
PGCOPY_TRAILER = struct.pack("!h", -1)
_FLOAT4_OID = 700

# Fixed-width kinds: big-endian numpy type of the value.
_FIXED = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4", "float8": ">f8", "bool": "u1"}
KINDS = (*_FIXED, "text", "float4[]")

#: Rows encoded and sent at a time by :func:`copy_binary`: bounds memory, and lets the
#: server parse one slice while the next is encoded.
DEFAULT_CHUNK_ROWS = 20_000


@dataclass
class CopyColumn:
    """One column for :func:`encode_copy_rows`.

    ``kind`` is one of :data:`KINDS`:

    - ``int2``, ``int4``, ``int8``, ``bool``: ``null``, when given, is a boolean mask of
      the NULL rows;
    - ``float4``, ``float8``: NaN and infinities are NULL;
    - ``text``: an 'S' array of UTF-8 bytes; ``null`` marks NULLs;
    - ``float4[]``: a 2-D float array, one 1-D array per row, NaN elements NULL.

    ``values=None`` or ``null=True`` makes the whole column NULL.
    """

    kind: str
    values: Any
    null: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown COPY column kind {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def all_null(self) -> bool:
        return self.values is None or (self.null is True)

    def rows(self, start: int, stop: int) -> CopyColumn:
        """The same column for rows ``start:stop``."""
        if self.all_null:
            return self
        values, null = np.asarray(self.values), None if self.null is None else np.asarray(self.null)
        return CopyColumn(self.kind, values if values.ndim == 0 else values[start:stop],
                          null if null is None or null.ndim == 0 else null[start:stop])


def encode_copy_rows(columns: Sequence[CopyColumn], n: int) -> bytes:
    """``n`` rows in PostgreSQL's binary COPY format (no header or trailer), built with numpy.

    Parameters
    ----------
    columns : sequence of CopyColumn
        The row's fields, in the order of the COPY statement's column list; each holds
        ``n`` values (a 0-d value is repeated).
    n : int
        Number of rows.

    Returns
    -------
    bytes
        The rows, to be written between :data:`PGCOPY_HEADER` and :data:`PGCOPY_TRAILER`.
    """
    fields: list[tuple[str, Any]] = [("nf", ">i2")]
    fills: list[tuple[str, Any]] = [("nf", len(columns))]
    drops: list[tuple[str, np.ndarray]] = []  # (field name, rows whose bytes are dropped)
    text_fields: list[tuple[str, np.ndarray]] = []
    for c, col in enumerate(columns):
        ln, v = f"l{c}", f"v{c}"
        if col.all_null:
            fields += [(ln, ">i4")]
            fills += [(ln, -1)]
            continue
        kind = col.kind
        if kind in _FIXED:
            size = np.dtype(_FIXED[kind]).itemsize
            if kind.startswith("float"):
                vals = np.asarray(col.values, dtype=np.float32 if kind == "float4" else np.float64)
                null = ~np.isfinite(vals)
            else:
                vals = np.asarray(col.values, dtype=bool if kind == "bool" else np.int64)
                null = None if col.null is None else np.asarray(col.null, bool)
            if null is not None and vals.ndim == 0:
                null = np.broadcast_to(null, (n,))
            fields += [(ln, ">i4"), (v, _FIXED[kind])]
            if null is not None and null.any():
                fills += [(ln, np.where(null, -1, size)), (v, np.where(null, 0, vals))]
                drops.append((v, null))
            else:
                fills += [(ln, size), (v, vals)]
        elif kind == "text":
            vals = np.asarray(col.values)
            width = max(vals.dtype.itemsize, 1)
            vals = vals.astype(f"S{width}", copy=False)
            lengths = _byte_lengths(vals)
            null = np.zeros(n, bool) if col.null is None else np.asarray(col.null, bool)
            fields += [(ln, ">i4"), (v, f"S{width}")]
            fills += [(ln, np.where(null, -1, lengths)), (v, vals)]
            text_fields.append((v, np.where(null, 0, lengths)))
        else:  # float4[]
            vals = np.asarray(col.values, dtype=np.float32).reshape(n, -1)
            nb = vals.shape[1]
            null = ~np.isfinite(vals)
            header = [(f"{v}nd", ">i4"), (f"{v}fl", ">i4"), (f"{v}oid", ">i4")]
            if nb:
                header += [(f"{v}dim", ">i4"), (f"{v}lb", ">i4")]
            fields += [(ln, ">i4"), *header]
            fills += [(ln, (12 + (8 if nb else 0) + 8 * nb) - 4 * null.sum(axis=1)),
                      (f"{v}nd", 1 if nb else 0), (f"{v}fl", 0), (f"{v}oid", _FLOAT4_OID)]
            if nb:
                fills += [(f"{v}dim", nb), (f"{v}lb", 1)]
            for b in range(nb):
                el, ev, nul = f"{v}l{b}", f"{v}e{b}", null[:, b]
                fields += [(el, ">i4"), (ev, ">f4")]
                if nul.any():
                    fills += [(el, np.where(nul, -1, 4)), (ev, np.where(nul, 0, vals[:, b]))]
                    drops.append((ev, nul))
                else:
                    fills += [(el, 4), (ev, vals[:, b])]
    rec = np.empty(n, dtype=np.dtype(fields))
    for name, value in fills:
        rec[name] = value
    if n == 0:
        return b""
    if not drops and not text_fields:
        return rec.tobytes()
    raw = rec.view(np.uint8).reshape(n, rec.dtype.itemsize)
    keep = np.ones(raw.shape, bool)
    for name, rows in drops:
        off = rec.dtype.fields[name][1]
        size = rec.dtype[name].itemsize
        keep[rows, off:off + size] = False
    for name, lengths in text_fields:
        off = rec.dtype.fields[name][1]
        width = rec.dtype[name].itemsize
        keep[:, off:off + width] = np.arange(width)[None, :] < lengths[:, None]
    return raw[keep].tobytes()


def _byte_lengths(values: np.ndarray) -> np.ndarray:
    """Length of each 'S' string (numpy pads them with NUL bytes)."""
    n, width = len(values), values.dtype.itemsize
    if n == 0:
        return np.zeros(0, np.int64)
    b = values.view(np.uint8).reshape(n, width)
    nonzero = b != 0
    last = width - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0)


def copy_binary(cursor, table: str, names: Sequence[str], columns: Sequence[CopyColumn], n: int, *,
                chunk_rows: int | None = None) -> int:
    """COPY ``n`` rows into ``table`` with a psycopg 3 cursor, ``chunk_rows`` at a time.

    Parameters
    ----------
    cursor : psycopg.Cursor
        A cursor of the connection (and transaction) that receives the rows.
    table : str
        Table name (trusted: not quoted).
    names : sequence of str
        Column names (trusted), in the order of ``columns``.
    columns : sequence of CopyColumn
        The values, of the kinds of the table's columns.
    n : int
        Number of rows.
    chunk_rows : int, optional
        Rows encoded at a time (default :data:`DEFAULT_CHUNK_ROWS`).

    Returns
    -------
    int
        ``n``.
    """
    if len(names) != len(columns):
        raise ValueError(f"{len(names)} column names for {len(columns)} columns")
    chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(PGCOPY_HEADER)
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            cp.write(encode_copy_rows([c.rows(start, stop) for c in columns], stop - start))
        cp.write(PGCOPY_TRAILER)
    return n
