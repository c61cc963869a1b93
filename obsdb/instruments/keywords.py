"""Which header keywords mean what: the tables the generic instrument profile reads.

Each list is ordered: the first keyword present (with a usable value) wins. A profile in
the configuration can replace any list (``[instruments.<name>.keywords]``), for example
``exptime = ["EXPOSURE"]`` or ``overscan = []`` to ignore a wrong BIASSEC.

Sources of the names: the FITS standard 4.0 (DATE-OBS, DATE-BEG, DATE-AVG, MJD-OBS,
MJD-AVG, TIMESYS, OBSGEO-*), SBIG's SBFITSEXT 1.0 as written by MaxIm DL, ACP, NINA,
TheSkyX and SharpCap (IMAGETYP, EXPTIME, XBINNING, CCD-TEMP, SET-TEMP, EGAIN, XPIXSZ,
FOCALLEN, OBJCTRA, OBJCTDEC, SITELAT, SITELONG, JD), Las Cumbres Observatory's raw and
BANZAI headers (OBSTYPE, CCDSUM, FILTER1..3, CAT-RA, RDNOISE, SATURATE, LATITUDE,
LONGITUD, HEIGHT) and IRAF/NOAO conventions (BIASSEC, TRIMSEC, DATASEC, GAIN, RDNOISE).
"""

from __future__ import annotations

# -- keyword lists, one per quantity ----------------------------------------------------

KEYWORDS: dict[str, tuple[str, ...]] = {
    # What kind of frame. Values are looked up in FRAME_TYPE_ALIASES.
    "imagetyp": ("IMAGETYP", "OBSTYPE", "FRAMETYP", "IMGTYPE", "FRAME"),
    "object": ("OBJECT", "OBJNAME", "TARGET"),
    # Filter: the first single-filter keyword present wins; the filter wheels are
    # combined only when none of these is present (LCO writes FILTER1..3 with 'air' for
    # an empty slot; placeholders are dropped when combining).
    "filter": ("FILTER", "FILTNAME", "INSFILTE"),
    "filter_wheels": ("FILTER1", "FILTER2", "FILTER3", "FILTER4"),
    "exptime": ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME"),
    "xbinning": ("XBINNING", "XBIN", "BINX", "CCDXBIN"),
    "ybinning": ("YBINNING", "YBIN", "BINY", "CCDYBIN"),
    # Both axes in one value: CCDSUM = '2 2' (NOAO, LCO), BINNING = '2x2' or 2.
    "binning": ("CCDSUM", "BINNING"),
    "gain": ("EGAIN", "GAIN"),  # e-/ADU
    "read_noise": ("RDNOISE", "READNOIS", "RON", "READNOISE"),  # e-
    "saturation": ("SATURATE", "SATLEVEL", "MAXLIN"),  # ADU
    # DATAMAX is often the largest pixel value of this image rather than the detector's
    # limit; it is used only when no keyword above is present and it looks like a limit.
    "datamax": ("DATAMAX",),
    # Measured detector temperature, then the set point as a last resort.
    "ccd_temp": ("CCD-TEMP", "CCD_TEMP", "CCDTEMP", "TEMPERAT", "CAMTEMP", "DET-TEMP", "DETTEMP"),
    "ccd_set_temp": ("SET-TEMP", "SETTEMP", "CCD-SET", "CCDSETP", "CCDSET"),
    # Pointing: pairs tried in order (telescope pointing before the catalog position).
    "ra": ("RA", "OBJCTRA", "TELRA", "CAT-RA", "RA_OBJ", "OBJRA"),
    "dec": ("DEC", "OBJCTDEC", "TELDEC", "CAT-DEC", "DEC_OBJ", "OBJDEC"),
    "equinox": ("EQUINOX", "EPOCH"),
    "airmass": ("AIRMASS", "SECZ", "AIRM"),
    "telescope": ("TELESCOP", "TELNAME"),
    "instrument": ("INSTRUME", "CAMERA", "DETECTOR"),
    # Site. Longitudes are read east-positive (see the profile's longitude_west_positive).
    "site_lat": ("SITELAT", "LATITUDE", "LAT-OBS", "OBS-LAT", "OBSGEO-B"),
    "site_lon": ("SITELONG", "LONGITUD", "LONG-OBS", "OBS-LONG", "OBSGEO-L"),
    # ALTITUDE comes last: LCO's ALTITUDE is the telescope's altitude angle, not the site.
    "site_height": ("SITEELEV", "HEIGHT", "OBSGEO-H", "ALT-OBS", "ELEVATIO", "OBS-ELEV", "ALTITUDE"),
    # Sections, FITS 1-based '[x1:x2,y1:y2]'.
    "overscan": ("BIASSEC",),
    "trim": ("TRIMSEC", "DATASEC"),
    # Optics, for a pixel scale when there is no WCS.
    "pixel_size": ("XPIXSZ", "XPIXELSZ", "PIXSIZE1"),  # micrometres
    "focal_length": ("FOCALLEN", "FOCAL", "FOCLEN"),  # millimetres
}

# Values that mean "no filter in this wheel" when wheels are combined. On its own, a
# FILTER = 'Clear' is a real (unfiltered) setup and kept as written.
FILTER_PLACEHOLDERS = frozenset({"air", "clear", "none", "open", "empty", "blank", "no filter", "nofilter", "-"})

# -- time -------------------------------------------------------------------------------

# Full date-times (or a date alone, completed by a TIME_OF_DAY keyword).
DATE_START_KEYWORDS = ("DATE-OBS", "DATE-BEG", "DATE_OBS", "UT-OBS", "UTC-OBS")
DATE_MID_KEYWORDS = ("DATE-AVG",)
# A time of day that completes a date-only DATE-OBS ('14/10/18' with UT = '03:07:02').
TIME_OF_DAY_KEYWORDS = ("TIME-OBS", "UT", "UTSTART", "UT-START", "UTC", "TIME-BEG", "UT-OBS", "UTC-OBS")
# Julian dates. MaxIm DL's JD is the start of the exposure. JD-HELIO, HJD, BJD and
# friends are not times of the exposure in UTC and are never used.
MJD_START_KEYWORDS = ("MJD-OBS", "MJD-BEG", "MJD_OBS")
MJD_MID_KEYWORDS = ("MJD-AVG", "MJD-MID")
JD_START_KEYWORDS = ("JD", "JD-OBS", "JD_OBS")
JD_MID_KEYWORDS = ("JD-MID",)
TIMESYS_KEYWORD = "TIMESYS"

# -- frame types ------------------------------------------------------------------------

# Keys are compared case-insensitively with runs of blanks, '_' and '-' made one space.
FRAME_TYPE_ALIASES: dict[str, str] = {
    # bias
    "bias frame": "bias",
    "bias": "bias",
    "zero": "bias",
    "zero frame": "bias",
    "offset": "bias",  # Astroart, APT
    "master bias": "bias",
    # dark (a flat-dark is a dark with the flats' exposure time)
    "dark frame": "dark",
    "dark": "dark",
    "dark flat": "dark",
    "flat dark": "dark",
    "darkflat": "dark",
    "flatdark": "dark",
    "master dark": "dark",
    # flat
    "flat field": "flat",
    "flat frame": "flat",
    "flatfield": "flat",
    "flat": "flat",
    "skyflat": "flat",
    "sky flat": "flat",
    "domeflat": "flat",
    "dome flat": "flat",
    "twiflat": "flat",
    "twilight flat": "flat",
    "lampflat": "flat",
    "lamp flat": "flat",
    "master flat": "flat",
    # light
    "light frame": "light",
    "light": "light",
    "object": "light",
    "science": "light",
    "sci": "light",
    "expose": "light",  # LCO science exposure
    "standard": "light",  # LCO standard star field
    "tricolor image": "light",  # MaxIm DL one-shot colour
    "target": "light",
}

# Frame types that are neither calibration nor science: kept as 'unclassified', with the
# reason, rather than guessed from the exposure time.
NON_FRAME_TYPES = frozenset(
    {"focus", "guide", "arc", "test", "pointing", "acquisition", "acquire", "experimental", "trailed"}
)

# Words in OBJECT or the file name that say what a frame is when no frame-type keyword
# does. Matched against whole words (the name split at non-letters, lower-cased).
NAME_HINTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("dark", frozenset({"darkflat", "darkflats", "flatdark", "flatdarks"})),
    ("bias", frozenset({"bias", "biases", "zero", "zeros", "zeroes"})),
    ("dark", frozenset({"dark", "darks"})),
    ("flat", frozenset({"flat", "flats", "skyflat", "skyflats", "domeflat", "domeflats", "twiflat",
                        "twiflats", "flatfield", "flatfields", "twilight", "lampflat", "lampflats"})),
)
