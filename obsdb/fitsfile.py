"""Reading FITS files: headers (never pixels) at ingest, pixels for the pipeline.

Every file obsdb ingests goes through :func:`read_header`, which must be cheap (it reads
the header blocks and seeks over the data) and strict about completeness: a file that a
camera is still writing, or that an archive delivered cut short, must be rejected as
``truncated`` rather than half-registered. Astropy has no header-only completeness check
(``fits.getheader`` happily returns the header of a file whose data stop half way, and
``fits.open`` only notices on data access, if at all), so this module walks the HDUs
itself: header blocks until the ``END`` card, then the data size computed from BITPIX,
NAXISn, PCOUNT and GCOUNT, padded to 2880 bytes (FITS standard 4.0, section 4.4.1). Only
the chosen image header is parsed with astropy.

Gzip files (``.fits.gz``; recognised by their magic bytes, whatever the name) are
stream-decompressed to the end, which also verifies the gzip CRC and length; nothing but
the image header is kept in memory. Tile-compressed files (``.fz``) are FITS files whose
image lives in a ``ZIMAGE = T`` binary table; the header returned is the image header as
astropy's ``CompImageHDU.header`` gives it (ZNAXISn mapped to NAXISn, and so on).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits

__all__ = [
    "SUPPORTED_SUFFIXES",
    "FitsFileError",
    "HeaderRead",
    "has_end_card",
    "is_fits_name",
    "read_data",
    "read_header",
    "sha256_file",
    "verify_complete",
]

SUPPORTED_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fz", ".fits.fz")

BLOCK = 2880
CARD = 80
_CHUNK = 1 << 20  # 1 MiB, for hashing and for skipping over gzip-compressed data
_GZIP_MAGIC = b"\x1f\x8b"
_END_CARD = b"END" + b" " * 77


def is_fits_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends with one of :data:`SUPPORTED_SUFFIXES` (any case)."""
    name = os.fspath(path).lower()
    return name.endswith(SUPPORTED_SUFFIXES)


class FitsFileError(ValueError):
    """A file that cannot be ingested as a frame.

    Parameters
    ----------
    kind
        Short machine-readable reason: ``empty``, ``not_fits``, ``truncated``,
        ``no_image``, ``cube``, ``unreadable_header``, ``bad_gzip``, ``permission`` or
        ``unreadable`` (any other operating-system read error).
    reason
        One sentence for a human: what is wrong with the file.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class HeaderRead:
    """What :func:`read_header` found in a file.

    Attributes
    ----------
    header
        The header of the image HDU (for a tile-compressed image: the image header, with
        NAXISn, BITPIX... as astropy's ``CompImageHDU.header`` gives them).
    hdu_index
        Index of the image HDU (0 = primary), as ``fits.open(path)[hdu_index]``.
    shape
        ``(NAXIS2, NAXIS1)`` of the image (degenerate axes NAXIS3 = 1... dropped).
    compressed
        The image is tile-compressed (a ``ZIMAGE = T`` table, ``.fz``).
    n_hdus
        Number of HDUs in the file.
    gzipped
        The whole file is gzip-compressed (``.fits.gz``).
    """

    header: fits.Header = field(repr=False)
    hdu_index: int
    shape: tuple[int, int]
    compressed: bool
    n_hdus: int
    gzipped: bool = False


@dataclass
class _HDU:
    """Structure of one HDU, from its raw header cards (no astropy parsing)."""

    index: int
    header_bytes: bytes
    xtension: str | None  # None for the primary HDU
    bitpix: int
    axes: tuple[int, ...]  # NAXIS1, NAXIS2, ...
    pcount: int
    gcount: int
    groups: bool
    zimage: bool
    zaxes: tuple[int, ...]  # ZNAXIS1, ... of a tile-compressed image

    @property
    def data_bytes(self) -> int:
        """Size of the data unit before padding (FITS standard eq. 2 and 4)."""
        if not self.axes:
            return 0
        axes = self.axes
        if self.xtension is None and self.groups and axes[0] == 0:
            axes = axes[1:]  # random groups: NAXIS1 = 0 is not a dimension
        return abs(self.bitpix) // 8 * self.gcount * (self.pcount + math.prod(axes))

    @property
    def padded_data_bytes(self) -> int:
        return -(-self.data_bytes // BLOCK) * BLOCK

    @property
    def image_axes(self) -> tuple[int, ...] | None:
        """The axes of the image this HDU holds, or None when it holds no image."""
        if self.zimage:
            axes = self.zaxes
        elif self.xtension in (None, "IMAGE") and not (self.xtension is None and self.groups):
            axes = self.axes
        else:
            return None
        if len(axes) < 2 or min(axes) <= 0:
            return None
        return axes


# -- the HDU walk -----------------------------------------------------------------------


class _Reader:
    """Forward-only reading of a plain or gzip-compressed file, with skip and EOF check."""

    def __init__(self, fileobj: BinaryIO, gzipped: bool, size: int | None) -> None:
        self.f = fileobj
        self.gzipped = gzipped
        self.size = size  # known for plain files; gzip streams learn theirs at the end
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Skip ``n`` bytes; returns how many could be skipped (fewer at end of file)."""
        if n <= 0:
            return 0
        if not self.gzipped:
            assert self.size is not None
            take = max(0, min(n, self.size - self.pos))
            self.f.seek(take, os.SEEK_CUR)
            self.pos += take
            return take
        done = 0
        while done < n:
            chunk = self.f.read(min(_CHUNK, n - done))
            if not chunk:
                break
            done += len(chunk)
        self.pos += done
        return done

    def drain(self) -> int:
        """Read to the end (for gzip: this is what checks the CRC); returns bytes left."""
        if not self.gzipped:
            assert self.size is not None
            return self.size - self.pos
        left = 0
        while chunk := self.f.read(_CHUNK):
            left += len(chunk)
        self.pos += left
        return left


def _card_value(card: bytes) -> str | None:
    """The value of a fixed-format card as text: strings unquoted, comments dropped."""
    if card[8:10] != b"= ":
        return None
    text = card[10:].decode("ascii", "replace").strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end + 1 : end + 2] == "'":
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").strip() if end != -1 else text[1:].strip()
    return text.split("/", 1)[0].strip()


_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "GROUPS", "ZIMAGE", "ZNAXIS"}


def _structure(index: int, header_bytes: bytes) -> _HDU:
    """Read the structural keywords of one HDU from its raw cards."""
    values: dict[str, str] = {}
    for start in range(0, len(header_bytes), CARD):
        card = header_bytes[start : start + CARD]
        key = card[:8].rstrip().decode("ascii", "replace")
        if key == "END":
            break
        if key in values:
            continue
        if key in _STRUCTURAL or key.startswith(("NAXIS", "ZNAXIS")):
            value = _card_value(card)
            if value is not None:
                values[key] = value

    def integer(key: str, default: int | None = None) -> int:
        if key not in values:
            if default is not None:
                return default
            raise FitsFileError("unreadable_header", f"HDU {index} has no {key} keyword")
        try:
            number = int(values[key])
        except ValueError:
            raise FitsFileError(
                "unreadable_header", f"HDU {index}: {key} = {values[key]!r} is not an integer"
            ) from None
        if number < 0:
            raise FitsFileError("unreadable_header", f"HDU {index}: {key} = {number} is negative")
        return number

    xtension = values.get("XTENSION") if index > 0 else None
    bitpix = int(values.get("BITPIX", "0")) if values.get("BITPIX", "").lstrip("-").isdigit() else None
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise FitsFileError(
            "unreadable_header", f"HDU {index}: BITPIX = {values.get('BITPIX')!r} is not a FITS BITPIX"
        )
    naxis = integer("NAXIS")
    if naxis > 999:
        raise FitsFileError("unreadable_header", f"HDU {index}: NAXIS = {naxis} is out of range")
    axes = tuple(integer(f"NAXIS{i}") for i in range(1, naxis + 1))
    zimage = values.get("ZIMAGE") == "T" and xtension == "BINTABLE"
    zaxes: tuple[int, ...] = ()
    if zimage:
        znaxis = integer("ZNAXIS", 0)
        zaxes = tuple(integer(f"ZNAXIS{i}") for i in range(1, min(znaxis, 999) + 1))
    return _HDU(
        index=index,
        header_bytes=header_bytes,
        xtension=xtension,
        bitpix=bitpix,
        axes=axes,
        pcount=integer("PCOUNT", 0),
        gcount=integer("GCOUNT", 1),
        groups=values.get("GROUPS") == "T",
        zimage=zimage,
        zaxes=zaxes,
    )


def _read_header_blocks(reader: _Reader, index: int, first: bytes) -> bytes:
    """Header blocks starting with ``first`` until the block that holds the END card."""
    blocks = [first]
    block = first
    while True:
        if len(block) < BLOCK:
            raise FitsFileError(
                "truncated", f"the header of HDU {index} is cut off at byte {reader.pos} (no END card)"
            )
        for start in range(0, BLOCK, CARD):
            if block[start : start + 3] == b"END" and block[start + 3 : start + CARD].strip(b" ") == b"":
                return b"".join(blocks)
        block = reader.read(BLOCK)
        blocks.append(block)


def _walk(reader: _Reader, keep_headers: bool = True) -> list[_HDU]:
    """Every HDU of the file, checking that each header and data unit is complete."""
    first = reader.read(BLOCK)
    if not first:
        raise FitsFileError("empty", "the file is empty" if not reader.gzipped else "the gzip file holds no data")
    card = first[:CARD]
    if card[:9] != b"SIMPLE  =" or _card_value(card) != "T":
        if card[:9] == b"SIMPLE  =":
            raise FitsFileError("not_fits", "SIMPLE is not T: the file says it does not conform to FITS")
        raise FitsFileError("not_fits", "the file does not start with SIMPLE = T, so it is not a FITS file")

    hdus: list[_HDU] = []
    block = first
    while True:
        index = len(hdus)
        header_bytes = _read_header_blocks(reader, index, block)
        hdu = _structure(index, header_bytes)
        if not keep_headers:
            hdu.header_bytes = b""
        hdus.append(hdu)
        need = hdu.padded_data_bytes
        got = reader.skip(need)
        if got < need:
            if got >= hdu.data_bytes:
                # Some writers never pad the last data block; cfitsio and astropy do,
                # and a writer still at work looks the same: not complete yet.
                raise FitsFileError(
                    "truncated",
                    f"HDU {index}: the data are all there but the file stops {need - got} bytes short "
                    "of the 2880-byte padding FITS requires (still being written, or a writer that "
                    "does not pad)",
                )
            raise FitsFileError(
                "truncated",
                f"HDU {index} needs {hdu.data_bytes} data bytes but the file ends after {got}",
            )
        block = reader.read(BLOCK)
        if not block:
            return hdus
        if not block.startswith(b"XTENSION="):
            # Bytes after the last HDU that are not an extension (zero padding, junk
            # some writers append): ignored, as astropy ignores them.
            reader.drain()
            return hdus


def _open_walk(path: str | os.PathLike[str], keep_headers: bool = True) -> tuple[list[_HDU], bool]:
    """Open ``path`` (plain or gzip) and walk it; returns the HDUs and whether it was gzipped."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, wrapped by gzip when needed
    except PermissionError:
        raise FitsFileError("permission", "permission denied reading the file") from None
    except IsADirectoryError:
        raise FitsFileError("unreadable", "the path is a directory, not a file") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FitsFileError("unreadable", f"cannot open the file: {exc.strerror or exc}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise FitsFileError("empty", "the file is empty (0 bytes)")
            magic = f.read(2)
            f.seek(0)
            if magic == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    return _walk(_Reader(gz, True, None), keep_headers), True
            return _walk(_Reader(f, False, size), keep_headers), False
        except EOFError:
            raise FitsFileError("truncated", "the gzip stream ends early: the file was cut short") from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise FitsFileError("bad_gzip", f"the gzip data are corrupt: {exc}") from None
        except PermissionError:
            raise FitsFileError("permission", "permission denied reading the file") from None
        except FitsFileError:
            raise
        except OSError as exc:
            raise FitsFileError("unreadable", f"read error: {exc.strerror or exc}") from None


# -- public functions -------------------------------------------------------------------


def verify_complete(path: str | os.PathLike[str]) -> None:
    """Raise :class:`FitsFileError` unless ``path`` is a complete FITS file.

    A watcher can tell "still being written" (kinds ``empty`` and ``truncated``) from
    "will never be a FITS file" (every other kind).
    """
    _open_walk(path, keep_headers=False)


def has_end_card(path: str | os.PathLike[str]) -> bool:
    """True only when ``path`` is a complete FITS file: every header has its END card
    and every data unit is all there (for gzip: the stream is complete and its CRC good).

    Cheap for plain files (reads the header blocks, seeks over the data); a gzip file is
    decompressed as a stream. Never raises for a bad file, only says False; a file that
    vanished raises FileNotFoundError.
    """
    try:
        verify_complete(path)
    except FitsFileError:
        return False
    return True


def _choose_image(hdus: list[_HDU]) -> _HDU:
    """The primary if it holds an image, else the first image (or compressed image) extension."""
    for hdu in hdus:
        axes = hdu.image_axes
        if axes is None:
            continue
        extra = [n for n in axes[2:] if n != 1]
        if extra:
            shape = "x".join(str(n) for n in axes)
            raise FitsFileError(
                "cube",
                f"HDU {hdu.index} is a {len(axes)}-D data cube ({shape}); a frame is one 2-D image "
                "(colour images and cubes are not ingested)",
            )
        return hdu
    kinds = ", ".join(h.xtension or "primary without image" for h in hdus)
    raise FitsFileError("no_image", f"no 2-D image in any of the {len(hdus)} HDU(s) ({kinds})")


_PRINTABLE = bytes(range(0x20, 0x7F))


def _parse_header(hdu: _HDU, path: str | os.PathLike[str]) -> fits.Header:
    """Parse the chosen HDU's header with astropy.

    FITS headers are printable ASCII. A stray accented letter in one card (an observer's
    name) is tolerated: that card's value reads as unreadable later, the frame is kept.
    A header where many cards hold other bytes is corrupt, and rejected.
    """
    n_cards = len(hdu.header_bytes) // CARD
    bad = sum(
        1
        for start in range(0, len(hdu.header_bytes), CARD)
        if hdu.header_bytes[start : start + CARD].translate(None, _PRINTABLE)
    )
    if bad > max(3, n_cards // 10):
        raise FitsFileError(
            "unreadable_header",
            f"HDU {hdu.index}: {bad} of {n_cards} header cards hold bytes that are not printable ASCII",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about each odd card; values are checked later
            header = fits.Header.fromstring(hdu.header_bytes)
    except Exception as exc:  # astropy raises several types for mangled cards
        raise FitsFileError("unreadable_header", f"HDU {hdu.index}: astropy cannot parse the header: {exc}") from None
    if hdu.zimage:
        header = _compressed_image_header(header, path, hdu.index)
    return header


def _compressed_image_header(bintable_header: fits.Header, path: str | os.PathLike[str], index: int) -> fits.Header:
    """The image header of a tile-compressed HDU, exactly as ``CompImageHDU.header``.

    Astropy's own (private) conversion is used on the header already read; should a
    future astropy move it, the file is opened again and ``CompImageHDU.header`` asked.
    """
    try:
        from astropy.io.fits.hdu.compressed.header import _bintable_header_to_image_header
    except ImportError:  # pragma: no cover - depends on the astropy version
        _bintable_header_to_image_header = None
    try:
        if _bintable_header_to_image_header is not None:
            return _bintable_header_to_image_header(bintable_header)
        with fits.open(path, lazy_load_hdus=True) as hdul:  # pragma: no cover
            return hdul[index].header.copy()
    except Exception as exc:
        raise FitsFileError("unreadable_header", f"the compressed image header is inconsistent: {exc}") from None


def read_header(path: str | os.PathLike[str]) -> HeaderRead:
    """Read the image header of a FITS file, checking that the file is complete.

    Reads header blocks only (never pixels) and checks every HDU's data size against the
    file (for gzip: against the decompressed stream, to the end).

    Parameters
    ----------
    path
        A FITS file: plain, gzip-compressed or tile-compressed (``.fz``).

    Returns
    -------
    HeaderRead

    Raises
    ------
    FitsFileError
        With ``kind`` ``empty``, ``not_fits``, ``truncated``, ``bad_gzip``,
        ``unreadable_header``, ``no_image``, ``cube``, ``permission`` or ``unreadable``.
    FileNotFoundError
        The file does not exist (it may have been moved away since it was listed).
    """
    hdus, gzipped = _open_walk(path)
    image = _choose_image(hdus)
    axes = image.image_axes
    assert axes is not None
    return HeaderRead(
        header=_parse_header(image, path),
        hdu_index=image.index,
        shape=(axes[1], axes[0]),
        compressed=image.zimage,
        n_hdus=len(hdus),
        gzipped=gzipped,
    )


def read_data(path: str | os.PathLike[str]) -> tuple[np.ndarray, fits.Header]:
    """The image of a FITS file as float32, with BZERO/BSCALE applied, and its header.

    Handles plain, gzip-compressed and tile-compressed (``.fz``) files; the file is
    checked as in :func:`read_header` first.

    Returns
    -------
    data : numpy.ndarray
        2-D float32 array of shape ``(NAXIS2, NAXIS1)``.
    header : astropy.io.fits.Header
        The image header.
    """
    info = read_header(path)
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            data = hdul[info.hdu_index].data
            image = np.array(data, dtype=np.float32).reshape(info.shape)
    except FitsFileError:
        raise
    except PermissionError:
        raise FitsFileError("permission", "permission denied reading the file") from None
    except Exception as exc:
        raise FitsFileError("unreadable", f"cannot read the image data: {exc}") from None
    return image, info.header


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
