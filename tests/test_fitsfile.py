"""obsdb.fitsfile: header reads, completeness checks, every kind of bad file, pixels."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from obsdb.fitsfile import (
    FitsFileError,
    has_end_card,
    is_fits_name,
    read_data,
    read_header,
    sha256_file,
    verify_complete,
)

NGC520 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ngc520-umd-g"


def write_image(path: Path, shape=(20, 30), dtype=np.uint16, header: dict | None = None, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 60000, size=shape).astype(dtype)
    hdr = fits.Header()
    for key, value in (header or {}).items():
        hdr[key] = value
    fits.PrimaryHDU(data, hdr).writeto(path)
    return path


def gzip_file(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes()))
    return dst


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.fits", True), ("a.FIT", True), ("a.fts", True), ("a.fits.gz", True), ("A.Fit.GZ", True),
        ("a.fts.gz", True), ("a.fz", True), ("a.fits.fz", True), ("dir/x.FITS", True),
        ("a.txt", False), ("a.gz", False), ("a.fits.bak", False), ("fits", False), ("a.jpg", False),
    ],
)
def test_is_fits_name(name, expected):
    assert is_fits_name(name) is expected
    assert is_fits_name(Path(name)) is expected


# -- good files -------------------------------------------------------------------------


def test_plain_header_matches_astropy(tmp_path):
    path = write_image(tmp_path / "a.fits", header={"OBJECT": "M 31", "EXPTIME": 30.0})
    got = read_header(path)
    assert got.hdu_index == 0 and got.n_hdus == 1
    assert got.shape == (20, 30)
    assert not got.compressed and not got.gzipped
    assert got.header["OBJECT"] == "M 31"
    assert got.header.tostring() == fits.getheader(path).tostring()
    assert has_end_card(path)


def test_gzip_header(tmp_path):
    plain = write_image(tmp_path / "a.fits", header={"EXPTIME": 5.0})
    gz = gzip_file(plain, tmp_path / "a.fits.gz")
    got = read_header(gz)
    assert got.gzipped and got.shape == (20, 30)
    assert got.header["EXPTIME"] == 5.0
    assert has_end_card(gz)


def test_gzip_recognised_by_content_not_name(tmp_path):
    plain = write_image(tmp_path / "a.fits")
    disguised = gzip_file(plain, tmp_path / "b.fits")  # gzip data, plain FITS name
    assert read_header(disguised).gzipped


def test_image_in_extension(tmp_path):
    hdus = fits.HDUList([
        fits.PrimaryHDU(header=fits.Header([("TELESCOP", "T1")])),
        fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(3.0))]),
        fits.ImageHDU(np.zeros((7, 9), np.float32), name="SCI"),
    ])
    hdus.writeto(tmp_path / "ext.fits")
    got = read_header(tmp_path / "ext.fits")
    assert got.hdu_index == 2 and got.n_hdus == 3 and got.shape == (7, 9)
    assert got.header["EXTNAME"] == "SCI"


def test_degenerate_third_axis_is_a_frame(tmp_path):
    fits.PrimaryHDU(np.zeros((1, 6, 8), np.int16)).writeto(tmp_path / "flat3.fits")
    got = read_header(tmp_path / "flat3.fits")
    assert got.shape == (6, 8)
    data, _ = read_data(tmp_path / "flat3.fits")
    assert data.shape == (6, 8)


def test_tile_compressed_header_is_the_image_header(tmp_path):
    data = np.random.default_rng(3).integers(0, 65535, (40, 50)).astype(np.uint16)
    hdr = fits.Header([("IMAGETYP", "Light Frame"), ("EXPTIME", 12.5), ("FILTER", "V")])
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdr)]).writeto(tmp_path / "c.fits.fz")
    got = read_header(tmp_path / "c.fits.fz")
    assert got.compressed and got.hdu_index == 1 and got.shape == (40, 50)
    with fits.open(tmp_path / "c.fits.fz") as hdul:
        expected = hdul[1].header
    assert got.header.tostring() == expected.tostring()
    assert got.header["NAXIS1"] == 50 and got.header["BITPIX"] == 16
    assert "ZNAXIS1" not in got.header
    pixels, header = read_data(tmp_path / "c.fits.fz")
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, data.astype(np.float32))  # integer RICE is lossless
    assert header["FILTER"] == "V"


def test_header_of_10000_cards(tmp_path):
    hdr = fits.Header()
    for i in range(10_000):
        hdr.append((f"K{i:07d}", i, "filler"), end=True)
    hdr["EXPTIME"] = 7.0
    fits.PrimaryHDU(np.zeros((4, 5), np.int16), hdr).writeto(tmp_path / "long.fits")
    got = read_header(tmp_path / "long.fits")
    assert got.header["K0009999"] == 9999 and got.header["EXPTIME"] == 7.0
    assert got.shape == (4, 5)
    assert has_end_card(tmp_path / "long.fits")


def test_missing_final_padding_is_truncated(tmp_path):
    path = write_image(tmp_path / "a.fits", shape=(10, 10))  # 200 data bytes padded to 2880
    raw = path.read_bytes()
    cut = tmp_path / "nopad.fits"
    cut.write_bytes(raw[: 2880 + 200])
    with pytest.raises(FitsFileError, match="truncated: .*data are all there.*padding"):
        read_header(cut)
    cut.write_bytes(raw[: 2880 + 199])
    with pytest.raises(FitsFileError, match="truncated: HDU 0 needs 200 data bytes"):
        read_header(cut)


def test_trailing_junk_after_last_hdu_is_ignored(tmp_path):
    path = write_image(tmp_path / "a.fits")
    path.write_bytes(path.read_bytes() + b"\0" * 2880 + b"junk")
    assert read_header(path).n_hdus == 1


# -- bad files, one per kind ------------------------------------------------------------


def _kind(path: Path) -> str:
    with pytest.raises(FitsFileError) as info:
        read_header(path)
    assert info.value.reason and info.value.kind in str(info.value)
    assert not has_end_card(path)
    return info.value.kind


def test_empty(tmp_path):
    (tmp_path / "e.fits").write_bytes(b"")
    with pytest.raises(FitsFileError, match="empty"):
        read_header(tmp_path / "e.fits")
    assert _kind(tmp_path / "e.fits") == "empty"


def test_empty_gzip(tmp_path):
    (tmp_path / "e.fits.gz").write_bytes(gzip.compress(b""))
    assert _kind(tmp_path / "e.fits.gz") == "empty"


def test_text_file_named_fits(tmp_path):
    (tmp_path / "notes.fits").write_text("observing log: clouds all night\n" * 200)
    with pytest.raises(FitsFileError, match="not_fits: .*SIMPLE"):
        read_header(tmp_path / "notes.fits")


def test_simple_false(tmp_path):
    path = write_image(tmp_path / "a.fits")
    raw = bytearray(path.read_bytes())
    raw[29] = ord("F")
    path.write_bytes(bytes(raw))
    assert _kind(path) == "not_fits"


@pytest.mark.parametrize("keep", [100, 2880, 2880 + 1000, -1])
def test_truncated_plain(tmp_path, keep):
    path = write_image(tmp_path / "a.fits", shape=(40, 60))
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(FitsFileError, match="truncated"):
        read_header(path)
    assert not has_end_card(path)


def test_truncated_header_without_end(tmp_path):
    hdr = fits.Header([(f"K{i}", i) for i in range(100)])
    path = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.int16), hdr).writeto(path)
    path.write_bytes(path.read_bytes()[:2880])  # the first of two header blocks
    with pytest.raises(FitsFileError, match="truncated: the header of HDU 0"):
        read_header(path)


def test_truncated_extension(tmp_path):
    fits.HDUList([fits.PrimaryHDU(np.zeros((8, 8), np.int16)), fits.ImageHDU(np.zeros((50, 50), np.float32))]).writeto(
        tmp_path / "two.fits"
    )
    raw = (tmp_path / "two.fits").read_bytes()
    (tmp_path / "two.fits").write_bytes(raw[:-3000])
    with pytest.raises(FitsFileError, match="truncated: HDU 1"):
        read_header(tmp_path / "two.fits")


def test_truncated_gzip(tmp_path):
    plain = write_image(tmp_path / "a.fits", shape=(100, 100))
    gz = gzip_file(plain, tmp_path / "a.fits.gz")
    raw = gz.read_bytes()
    gz.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FitsFileError, match="truncated"):
        read_header(gz)
    assert not has_end_card(gz)


def test_gzip_of_complete_but_short_fits(tmp_path):
    plain = write_image(tmp_path / "a.fits", shape=(100, 100))
    gz = tmp_path / "short.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()[:-5000]))  # a valid gzip of a cut file
    with pytest.raises(FitsFileError, match="truncated: HDU 0 needs"):
        read_header(gz)


def test_gzip_of_garbage_text(tmp_path):
    (tmp_path / "g.fits.gz").write_bytes(gzip.compress(b"this is not an image\n" * 100))
    assert _kind(tmp_path / "g.fits.gz") == "not_fits"


def test_garbage_with_gzip_magic(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "g.fits.gz").write_bytes(b"\x1f\x8b\x08\x00" + rng.bytes(5000))
    with pytest.raises(FitsFileError, match="bad_gzip"):
        read_header(tmp_path / "g.fits.gz")


def test_gzip_with_bad_crc(tmp_path):
    plain = write_image(tmp_path / "a.fits")
    raw = bytearray(gzip.compress(plain.read_bytes()))
    raw[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    (tmp_path / "crc.fits.gz").write_bytes(bytes(raw))
    assert _kind(tmp_path / "crc.fits.gz") == "bad_gzip"


def test_table_only(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column("mag", "E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table.fits")
    with pytest.raises(FitsFileError, match="no_image: no 2-D image"):
        read_header(tmp_path / "table.fits")
    assert has_end_card(tmp_path / "table.fits")  # complete, only not a frame


def test_one_dimensional_image_is_no_image(tmp_path):
    fits.PrimaryHDU(np.arange(10, dtype=np.int16)).writeto(tmp_path / "spec.fits")
    with pytest.raises(FitsFileError, match="no_image"):
        read_header(tmp_path / "spec.fits")


def test_cube(tmp_path):
    fits.PrimaryHDU(np.zeros((3, 10, 12), np.uint16)).writeto(tmp_path / "cube.fits")
    with pytest.raises(FitsFileError, match=r"cube: HDU 0 is a 3-D data cube \(12x10x3\)"):
        read_header(tmp_path / "cube.fits")
    assert has_end_card(tmp_path / "cube.fits")


def test_bad_bitpix_is_unreadable_header(tmp_path):
    path = write_image(tmp_path / "a.fits")
    raw = path.read_bytes().replace(b"BITPIX  =                   16", b"BITPIX  =                   17", 1)
    path.write_bytes(raw)
    with pytest.raises(FitsFileError, match="unreadable_header: HDU 0: BITPIX"):
        read_header(path)


def test_non_integer_naxis_is_unreadable_header(tmp_path):
    path = write_image(tmp_path / "a.fits")
    raw = path.read_bytes().replace(b"NAXIS1  =                   30", b"NAXIS1  =                 30.5", 1)
    path.write_bytes(raw)
    with pytest.raises(FitsFileError, match="unreadable_header: HDU 0: NAXIS1"):
        read_header(path)


def test_binary_garbage_header_is_unreadable(tmp_path):
    path = write_image(tmp_path / "a.fits")
    raw = bytearray(path.read_bytes())
    garbage = bytes(np.random.default_rng(1).integers(128, 256, 80 * 20, dtype=np.uint8))
    end = raw.find(b"END" + b" " * 77)
    raw[end : end + 80 * 21] = garbage + b"END".ljust(80)
    path.write_bytes(bytes(raw))
    with pytest.raises(FitsFileError, match="unreadable_header: .*not printable ASCII"):
        read_header(path)


def test_one_accented_card_is_tolerated(tmp_path):
    path = write_image(tmp_path / "a.fits", header={"OBSERVER": "Jose", "EXPTIME": 3.0})
    raw = path.read_bytes().replace(b"'Jose", "'Jos\u00e9".encode("latin-1"), 1)
    path.write_bytes(raw)
    assert read_header(path).header["EXPTIME"] == 3.0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading the file")
def test_permission_denied(tmp_path):
    path = write_image(tmp_path / "a.fits")
    path.chmod(0)
    try:
        with pytest.raises(FitsFileError, match="permission"):
            read_header(path)
        assert not has_end_card(path)
    finally:
        path.chmod(0o644)


def test_directory_is_unreadable(tmp_path):
    (tmp_path / "dir.fits").mkdir()
    with pytest.raises(FitsFileError, match="unreadable"):
        read_header(tmp_path / "dir.fits")


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "gone.fits")
    with pytest.raises(FileNotFoundError):
        has_end_card(tmp_path / "gone.fits")


def test_verify_complete_says_why(tmp_path):
    path = write_image(tmp_path / "a.fits")
    verify_complete(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FitsFileError, match="truncated"):
        verify_complete(path)


# -- pixels and hashes ------------------------------------------------------------------


def test_read_data_applies_bzero_bscale(tmp_path):
    stored = np.array([[-32768, -1, 0, 1, 32767]], dtype=np.int16)
    hdu = fits.PrimaryHDU(stored)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 100.0
    hdu.writeto(tmp_path / "scaled.fits")
    data, header = read_data(tmp_path / "scaled.fits")
    assert data.dtype == np.float32
    np.testing.assert_allclose(data, 100.0 + 0.5 * stored.astype(np.float64))
    assert header["BZERO"] == 100.0


def test_read_data_unsigned_16_bit(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    fits.PrimaryHDU(values).writeto(tmp_path / "u16.fits")  # stored as int16 + BZERO 32768
    assert fits.getheader(tmp_path / "u16.fits")["BZERO"] == 32768
    for path in (tmp_path / "u16.fits", gzip_file(tmp_path / "u16.fits", tmp_path / "u16.fits.gz")):
        data, _ = read_data(path)
        np.testing.assert_array_equal(data, values.astype(np.float32))


def test_read_data_refuses_a_truncated_file(tmp_path):
    path = write_image(tmp_path / "a.fits")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FitsFileError, match="truncated"):
        read_data(path)


def test_sha256_file(tmp_path):
    payload = np.random.default_rng(5).bytes(3 * (1 << 20) + 17)  # spans several chunks
    (tmp_path / "blob.fits").write_bytes(payload)
    assert sha256_file(tmp_path / "blob.fits") == hashlib.sha256(payload).hexdigest()


# -- the real night ---------------------------------------------------------------------


@pytest.mark.skipif(not NGC520.is_dir(), reason=f"real data not found at {NGC520}")
def test_real_files_read_as_gzip_frames():
    files = sorted(NGC520.glob("*.fit.gz"))
    assert len(files) == 28
    for path in files:
        got = read_header(path)
        assert (got.hdu_index, got.n_hdus, got.shape, got.gzipped) == (0, 1, (1020, 1530), True)
        assert got.header["INSTRUME"] == "SBIG ST-8 3 CCD Camera"


@pytest.mark.skipif(not NGC520.is_dir(), reason=f"real data not found at {NGC520}")
def test_header_read_timing(tmp_path):
    """Times one header read per format (printed with -s; not asserted: machines differ)."""
    src = NGC520 / "NGC520-001-g.fit.gz"
    plain = tmp_path / "plain.fit"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    data, header = fits.getdata(plain, header=True)
    fz = tmp_path / "tile.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(fz)
    two_mb = tmp_path / "2mb.fits"
    fits.PrimaryHDU(data[:1024, :1024].astype(np.int16), header).writeto(two_mb)  # 2 MiB of pixels
    for label, path in (("plain .fits (2 MiB)", two_mb), ("plain .fit (3.1 MB)", plain),
                        (".fit.gz (1.6 MB, 3.1 MB inside)", src), (".fits.fz", fz)):
        read_header(path)  # warm the page cache
        times = []
        for _ in range(5):
            start = time.perf_counter()
            read_header(path)
            times.append(time.perf_counter() - start)
        print(f"read_header {label}: best {min(times) * 1e3:.2f} ms, median {sorted(times)[2] * 1e3:.2f} ms")
