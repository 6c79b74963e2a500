"""Raster input and output: the one module that opens paths and URIs.

Reading returns raw band values (GDAL scale/offset applied) as float32 plus a validity mask
that folds together nodata, NaN, an alpha band and a GDAL mask band. Writing happens beside
the output and is moved into place only when complete, so a failed run never leaves a
half-written file at the output path.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from georaster_quant.errors import BandMismatchError, OutputPathError, RasterInputError
from georaster_quant.threads import available_cores
from georaster_quant.tiling import Window, mirror_take, source_window

#: GDAL block cache for our readers, in MB. GDAL's default (5 % of RAM) is far larger than
#: anything we need: the streaming readers decode each block once, in order (measured: 256 MB
#: instead of 32 MB raised the peak RSS of a 16384² run by about 20 MB for nothing).
GDAL_CACHEMAX_MB = 32
#: Retries for rasters read over HTTP(S) or from object storage, unless the user set them.
HTTP_RETRY_DEFAULTS = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1"}
#: Inputs read over the network (also inside /vsizip/ and the like), where a failed read may
#: succeed when tried again.
_REMOTE_MARKS = (
    "http://", "https://", "s3://", "gs://", "az://", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz",
    "/vsiadls", "/vsioss", "/vsiswift", "/vsiwebhdfs",
)  # fmt: skip
#: Rows tested at a time by :func:`validity` (bounds its temporaries).
_VALIDITY_ROWS = 32


def read_retries(path: str) -> tuple[int, float]:
    """Retries and first delay (seconds, doubling) for a failed read of ``path``.

    GDAL retries HTTP requests itself, but not the parallel multi-range requests that fetch
    a block row's blocks at once; the reader retries those reads with the same settings.
    Local files get no retries.
    """
    if not any(mark in path for mark in _REMOTE_MARKS):
        return 0, 0.0

    def parse(setting: dict[str, str]) -> tuple[int, float]:
        return int(setting["GDAL_HTTP_MAX_RETRY"]), float(setting["GDAL_HTTP_RETRY_DELAY"])

    try:
        return parse({k: os.environ.get(k, v) for k, v in HTTP_RETRY_DEFAULTS.items()})
    except ValueError:  # values GDAL would not parse either: the defaults
        return parse(HTTP_RETRY_DEFAULTS)


def gdal_env() -> dict[str, Any]:
    """GDAL options for our readers, unless the user set them.

    A deliberate block cache, HTTP retries by default, and block decoding on the cores this
    process may use (a full block row is read at once, so its blocks decompress in parallel).
    """
    options: dict[str, Any] = {"GDAL_CACHEMAX": GDAL_CACHEMAX_MB}
    defaults = {**HTTP_RETRY_DEFAULTS, "GDAL_NUM_THREADS": str(available_cores())}
    options.update({k: v for k, v in defaults.items() if k not in os.environ})
    return options


@dataclass(frozen=True)
class RasterInfo:
    """What a reader knows about a raster without reading pixels."""

    path: str
    width: int
    height: int
    bands: tuple[int, ...]
    band_names: tuple[str | None, ...]
    dtype: str
    nodata: float | None
    crs: str | None
    transform: Affine
    block_shape: tuple[int, int]
    has_alpha: bool
    has_mask: bool
    scaled: bool

    @property
    def count(self) -> int:
        """Number of data bands read (alpha bands excluded)."""
        return len(self.bands)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units: the lengths of a pixel's sides, rotated or not."""
        t = self.transform
        return math.hypot(t.a, t.d), math.hypot(t.b, t.e)


def _gdal_message(exc: BaseException) -> str:
    """The first line of GDAL's own message about a failure.

    A failed read is raised as "Read failed. See previous exception for details." with GDAL's
    error as its cause, which usually names the file that failed (for a VRT, its source).
    """
    cause = exc.__cause__ or exc
    return (str(cause) or type(cause).__name__).splitlines()[0]


def _open(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    name = os.fspath(path)
    if "://" not in name and not name.startswith("/vsi") and not Path(name).exists():
        raise RasterInputError(f"{name}: no such file")
    try:
        return rasterio.open(name)
    except RasterioError as exc:
        raise RasterInputError(f"{name}: not a readable raster ({_gdal_message(exc)})") from exc


def validity(
    raw: np.ndarray,
    nodata: float | None,
    mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Valid pixels of raw band values ``(bands, h, w)``: no band nodata or NaN, mask set.

    ``mask`` is an alpha band or GDAL mask (True = valid); ``out``, if given, receives the
    result. Tested in chunks of rows, so the temporaries stay small however tall the window.
    """
    valid = np.empty(raw.shape[1:], dtype=bool) if out is None else out
    valid[...] = True if mask is None else mask
    check_nodata = nodata is not None and not np.isnan(nodata)
    value = np.asarray(nodata).astype(raw.dtype) if check_nodata else None
    for r in range(0, raw.shape[1], _VALIDITY_ROWS):
        rows, part = slice(r, r + _VALIDITY_ROWS), valid[r : r + _VALIDITY_ROWS]
        for band in raw[:, rows]:
            if check_nodata:
                part &= band != value
            if raw.dtype.kind == "f":
                part &= ~np.isnan(band)
    return valid


def to_physical(
    raw: np.ndarray,
    scale_offset: tuple[np.ndarray, np.ndarray] | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Raw band values ``(..., bands, h, w)`` to float32 physical values (GDAL scale, offset).

    The result is a new array, C-ordered, or with ``channels_last`` band-interleaved in memory
    (shape unchanged, bands the fastest axis): the layout torch's kernels read fastest.
    """
    if channels_last:
        *lead, bands, h, w = raw.shape
        data = np.empty((*lead, h, w, bands), np.float32)
        data = np.moveaxis(data, -1, -3)
        np.copyto(data, raw, casting="unsafe")  # tiles may be strided views
    else:
        data = raw.astype(np.float32, order="C")
    if scale_offset is not None:
        scales, offsets = (np.asarray(v)[:, None, None] for v in scale_offset)
        data[...] = data * scales + offsets  # in float64, as GDAL scales, then stored
    return data


class RasterReader:
    """Windowed reads of a raster's data bands with a validity mask.

    Use as a context manager. ``bands`` selects 1-based data bands in model order; by default
    every band that is not an alpha band is read.
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(rasterio.Env(**gdal_env()))
        self._name = os.fspath(path)
        #: Set by a consumer that gives up (a failed or interrupted run): a read waiting to be
        #: retried then fails at once instead of sleeping out its backoff.
        self.cancel = threading.Event()
        try:
            self._ds = self._stack.enter_context(_open(path))
        except BaseException:
            self._stack.close()
            raise
        ds = self._ds
        interp = ds.colorinterp
        alpha = [i + 1 for i, ci in enumerate(interp) if ci == ColorInterp.alpha]
        data_bands = [i for i in range(1, ds.count + 1) if i not in alpha]
        if bands is None:
            bands = data_bands
        bad = [b for b in bands if b not in data_bands]
        if bad:
            self.close()
            raise BandMismatchError(
                f"{ds.name}: band(s) {bad} do not exist (data bands are {data_bands})"
            )
        self._alpha = alpha[0] if alpha else None
        flags = ds.mask_flag_enums[bands[0] - 1]
        self._per_dataset_mask = MaskFlags.per_dataset in flags and self._alpha is None
        scales = np.array([ds.scales[b - 1] for b in bands], dtype=np.float64)
        offsets = np.array([ds.offsets[b - 1] for b in bands], dtype=np.float64)
        self._scale = None if np.all(scales == 1) and np.all(offsets == 0) else (scales, offsets)
        self.info = RasterInfo(
            path=ds.name,
            width=ds.width,
            height=ds.height,
            bands=tuple(bands),
            band_names=tuple(ds.descriptions[b - 1] for b in bands),
            dtype=ds.dtypes[bands[0] - 1],
            nodata=ds.nodata,
            crs=ds.crs.to_string() if ds.crs else None,
            transform=ds.transform,
            block_shape=tuple(ds.block_shapes[bands[0] - 1]),  # type: ignore[arg-type]
            has_alpha=self._alpha is not None,
            has_mask=self._per_dataset_mask,
            scaled=self._scale is not None,
        )
        self._retries = read_retries(self.info.path)

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the dataset."""
        self._stack.close()

    def read_raw(
        self, inside: Window, out: np.ndarray | None = None, valid_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw values (the file's dtype) and validity of a window inside the raster.

        ``out`` and ``valid_out``, if given, receive the values and the validity (no
        intermediate copies).
        """
        info = self.info
        rio_window = RioWindow(inside.col_off, inside.row_off, inside.width, inside.height)
        retries, delay = self._retries
        for attempt in range(retries + 1):
            try:
                if attempt == 0:
                    raw, mask = self._read_from(self._ds, rio_window, out)
                else:  # GDAL may keep the failed read's blocks, broken, in the handle's cache:
                    # retry on a fresh handle, opened and closed in this (reader) thread
                    with rasterio.Env(**gdal_env()), _open(self._name) as fresh:
                        raw, mask = self._read_from(fresh, rio_window, out)
                break
            except (RasterioError, RasterInputError) as exc:
                reason = _gdal_message(exc) if isinstance(exc, RasterioError) else exc
                if attempt == retries:
                    raise RasterInputError(
                        f"{info.path}: read failed at {inside} ({reason})"
                    ) from exc
                if self.cancel.wait(delay * 2**attempt):
                    raise RasterInputError(
                        f"{info.path}: read failed at {inside} ({reason}); not retried, the "
                        "run was stopped"
                    ) from exc
        return raw, validity(raw, info.nodata, mask, valid_out)

    def _read_from(
        self, ds: rasterio.DatasetReader, window: RioWindow, out: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Data bands and the alpha or dataset mask (True = valid), if any, of ``window``."""
        raw = ds.read(list(self.info.bands), window=window, out=out)
        if self._alpha is not None:
            return raw, ds.read(self._alpha, window=window) > 0
        if self._per_dataset_mask:
            return raw, ds.read_masks(self.info.bands[0], window=window) > 0
        return raw, None

    def to_physical(self, raw: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """Raw values to float32 physical values (scale/offset applied; see :func:`to_physical`)."""
        return to_physical(raw, self._scale, channels_last)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` as ``(data, valid)``; parts outside the raster are mirrored.

        ``data`` is float32 ``(bands, h, w)`` in physical units (scale/offset applied);
        ``valid`` is bool ``(h, w)``, False where any band is nodata or NaN, or where the
        alpha band or mask band says so.
        """
        info = self.info
        inside = source_window(window, info.height, info.width)
        raw, valid = self.read_raw(inside)
        return (
            mirror_take(self.to_physical(raw), inside, window, info.height, info.width),
            mirror_take(valid, inside, window, info.height, info.width),
        )

    def class_table(self) -> tuple[list[str], list[tuple[int, int, int]]] | None:
        """Class names (``CLASSES`` tag) and colours (colour table) of a label raster, if set."""
        names = self._ds.tags().get("CLASSES")
        if not names:
            return None
        parts = [n.strip() for n in names.split(",")]
        while parts and not parts[-1]:  # a trailing comma names no class
            parts.pop()
        classes = [n or f"class_{i}" for i, n in enumerate(parts)]  # a doubled one: generic
        try:
            cmap = self._ds.colormap(self.info.bands[0])
        except ValueError:
            cmap = {}
        colors = [tuple(cmap.get(i, (128, 128, 128, 255))[:3]) for i in range(len(classes))]
        return classes, colors  # type: ignore[return-value]

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Read the whole raster (small rasters only: labels, tests)."""
        return self.read(Window(0, 0, self.info.height, self.info.width))


def read_info(path: str | os.PathLike[str]) -> RasterInfo:
    """Open ``path`` just long enough to describe it."""
    with RasterReader(path) as reader:
        return reader.info


def select_bands(
    info: RasterInfo,
    model_band_names: Sequence[str | None],
    explicit: Sequence[int] | None = None,
) -> list[int]:
    """Choose which raster bands feed the model, in the model's band order.

    An explicit 1-based list wins; otherwise bands are matched by description when both the
    raster and the model name all of theirs; otherwise the raster's band order is used. A
    count mismatch is an error before any pixel is read.
    """
    wanted = len(model_band_names)
    if explicit is not None:
        if len(explicit) != wanted:
            raise BandMismatchError(
                f"{info.path}: --bands lists {len(explicit)} band(s) but the model takes {wanted}"
            )
        missing = [b for b in explicit if b not in info.bands]
        if missing:
            raise BandMismatchError(
                f"{info.path}: --bands names band(s) {missing}, the raster has {list(info.bands)}"
            )
        return list(explicit)
    raster_names = [n.lower() if n else None for n in info.band_names]
    model_names = [n.lower() if n else None for n in model_band_names]
    if all(raster_names) and all(model_names) and set(model_names) <= set(raster_names):
        return [info.bands[raster_names.index(n)] for n in model_names]
    if info.count != wanted:
        raise BandMismatchError(
            f"{info.path}: raster has {info.count} data band(s) but the model takes {wanted}; "
            "pass --bands to choose them"
        )
    return list(info.bands)


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    folder: bool = False,
    marker: str | None = None,
    inputs: InputPaths | Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Refuse an output path that cannot be written, before any work starts.

    ``folder`` says whether the output is a folder (a bundle, a report) or a file; an existing
    path of the other kind is refused even with ``overwrite``. An existing folder is replaced
    only if it holds ``marker``, the file that says this tool wrote it (see
    :func:`check_replaceable`). No output may be, or hold, one of the command's ``inputs``.
    """
    out = Path(path)
    _check_parent(out)
    (inputs if isinstance(inputs, InputPaths) else InputPaths(inputs)).check(out)
    if out.exists() and out.is_dir() != folder:  # first: --overwrite would not help
        want, found = ("a folder", "a file") if folder else ("a file", "a folder")
        raise OutputPathError(f"{out}: is {found}, the output is {want}")
    if out.exists() and not overwrite:
        raise OutputPathError(f"{out}: already exists (pass --overwrite to replace it)")
    if folder and out.is_dir():
        check_replaceable(out, marker)
    return out


class InputPaths:
    """A command's inputs, resolved once, to check outputs against (many outputs, many inputs).

    Local paths are compared as resolved paths; object-storage inputs (``s3://``, ``/vsis3/``)
    as normalised ``s3://`` URIs. Other URLs and GDAL virtual paths cannot be outputs.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike[str]] = ()):
        self.files: dict[Path, str] = {}
        self.folders: dict[Path, str] = {}  # every folder that holds an input
        self.uris: dict[str, str] = {}
        for given in inputs:
            name = os.fspath(given)
            uri = s3_uri(name)
            if uri is not None:
                self.uris[uri] = name
            elif "://" not in name and not name.startswith("/vsi"):
                source = Path(name).resolve()
                self.files[source] = name
                for parent in source.parents:
                    self.folders.setdefault(parent, name)

    def check(self, out: str | os.PathLike[str]) -> None:
        """Refuse an output that is one of the inputs, or a folder that holds one."""
        name = os.fspath(out)
        uri = s3_uri(name)
        if uri is not None:
            what, found = "is", self.uris.get(uri)
        else:
            target = Path(name).resolve()
            what = "is" if target in self.files else "holds"
            found = self.files.get(target) or self.folders.get(target)
        if found is not None:
            raise OutputPathError(f"{name}: {what} the input {found}; choose another output")


def s3_uri(name: str) -> str | None:
    """``s3://bucket/key`` for an S3 object named either way (``/vsis3/bucket/key``), else None."""
    if name.startswith("s3://"):
        return "s3://" + name[5:].lstrip("/")
    if name.startswith("/vsis3/"):
        return "s3://" + name[7:].lstrip("/")
    return None


def _check_parent(out: Path) -> None:
    """Outputs go into existing folders: a typo in a path is an error, not a new folder tree."""
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputPathError(f"{out}: parent {parent} is a file, not a folder")
    if not parent.exists():
        raise OutputPathError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{out}: folder {parent} is not writable")


def check_replaceable(folder: Path, marker: str | None) -> None:
    """Refuse to replace a folder this tool did not write, or one holding the current folder.

    ``--overwrite`` of a bundle or report must never delete a user's folder (or the data in
    it): the folder must be empty or hold ``marker`` (``bundle.json``, a report's marker file).
    """
    here = Path.cwd().resolve()
    if folder.resolve() in (here, *here.parents):
        raise OutputPathError(f"{folder}: holds the current folder; choose another output")
    if not any(folder.iterdir()):
        return
    if marker is None or not (folder / marker).is_file():
        what = f"no {marker} in it" if marker else "not one of ours"
        raise OutputPathError(
            f"{folder}: is a folder this tool did not write ({what}); not replacing it"
        )


def ensure_folder(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """Create an output folder whose parent exists; refuse a file or a missing parent.

    With ``create=False`` only the checks run, so that a command failing later leaves no
    empty folder behind; it creates the folder once it writes.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{folder}: is a file, not a folder")
    _check_parent(folder)
    if create:
        folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, suffix: str = "", marker: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    The temporary may be a file or a folder; a folder at ``path`` is only ever replaced by a
    folder, and only if :func:`check_replaceable` with ``marker`` allows it. It is renamed
    aside first and deleted only once the new one is in place, so a failure at any point
    leaves the old folder whole (at ``path``, or at the hidden ``.NAME.*.old`` beside it if
    the process dies between the two renames). On failure the temporary is removed and
    ``path`` is left as it was.
    """
    out = Path(path)
    tmp = _hidden_name(out, f".tmp{suffix}")
    old = None
    try:
        yield tmp
        if out.is_dir() and not out.is_symlink():
            if not tmp.is_dir():
                raise OutputPathError(f"{out}: is a folder; not replacing it with a file")
            check_replaceable(out, marker)
            old = _hidden_name(out, ".old")
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        # Decided by what is on disk, not by how far this code got: an interrupt may land
        # between a rename and the next line.
        if old is not None and old.exists():
            if not tmp.exists():  # the new output is in place: the old one goes
                shutil.rmtree(old, ignore_errors=True)
            elif not out.exists():  # put the old one back (if that fails, it stays hidden)
                with contextlib.suppress(OSError):
                    os.replace(old, out)
        if tmp.exists():
            _remove(tmp)


def _hidden_name(out: Path, suffix: str) -> Path:
    """A free hidden name beside ``out`` (``.NAME.XXXXXXXX{suffix}``), not created."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    except PermissionError as exc:
        raise OutputPathError(f"{out}: cannot write in {out.parent} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


class RasterWriter:
    """An open GeoTIFF being written window by window (``writer[window] = array``)."""

    def __init__(self, dataset: rasterio.io.DatasetWriter):
        self._ds = dataset

    def __setitem__(self, window: Window, array: np.ndarray) -> None:
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        self._ds.write(array if array.ndim == 3 else array[None], window=rio_window)

    def set_band_names(self, names: Sequence[str]) -> None:
        """Write band descriptions."""
        for i, name in enumerate(names, start=1):
            self._ds.set_band_description(i, name)

    def update_tags(self, band: int = 0, **tags: Any) -> None:
        """Add dataset (band 0) or band metadata tags."""
        self._ds.update_tags(band, **{k: str(v) for k, v in tags.items()})

    def write_colormap(self, band: int, colormap: dict[int, tuple[int, int, int]]) -> bool:
        """Attach a colour table to a band; False where GeoTIFF cannot hold one.

        TIFF keeps a colour table only in files of one or two samples per pixel; wider files
        (a class map with probability bands) rely on the QGIS style written beside them.
        """
        if self._ds.count > 2:
            return False
        self._ds.write_colormap(band, colormap)
        self._ds.colorinterp = [
            ColorInterp.palette if i == band - 1 else ColorInterp.gray
            for i in range(self._ds.count)
        ]
        return True


def overview_factors(width: int, height: int, blocksize: int) -> list[int]:
    """Overview levels 2, 4, ... until the smallest fits in one block (at least one level)."""
    factors = [2]
    while max(width, height) / factors[-1] > blocksize:
        factors.append(factors[-1] * 2)
    return factors


def _to_cog(staging: Path, out: Path, profile: dict[str, Any], resampling: str) -> None:
    """Overviews on the staging GeoTIFF, then a copy with them in front: a COG layout.

    The GTiff driver with COPY_SRC_OVERVIEWS keeps colour tables and band interpretations
    (GDAL's COG driver turns the second band of a 2-band file into alpha).
    """
    from rasterio.enums import Resampling

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB), rasterio.open(staging, "r+") as dst:
        factors = overview_factors(dst.width, dst.height, profile["blockxsize"])
        dst.build_overviews(factors, Resampling[resampling.lower()])
    rasterio.shutil.copy(
        staging,
        out,
        driver="GTiff",
        TILED=True,
        BLOCKXSIZE=profile["blockxsize"],
        BLOCKYSIZE=profile["blockysize"],
        COMPRESS=profile["compress"].upper(),
        PREDICTOR=profile["predictor"],
        PHOTOMETRIC="MINISBLACK",
        INTERLEAVE=profile["interleave"].upper(),
        COPY_SRC_OVERVIEWS=True,
        BIGTIFF="IF_SAFER",
    )


@contextlib.contextmanager
def write_raster(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    count: int,
    dtype: str,
    crs: str | None,
    transform: Affine,
    nodata: float | None,
    blocksize: int = 256,
    compress: str = "deflate",
    cog: bool = False,
    overview_resampling: str = "average",
) -> Iterator[RasterWriter]:
    """Write a tiled, compressed GeoTIFF (or a COG) atomically to ``path``.

    ``overview_resampling`` applies to COG overviews: ``average`` for measurements, ``mode``
    for class maps.
    """
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": compress,
        "predictor": 2 if np.dtype(dtype).kind in "iu" else 1,
        "interleave": "pixel" if count > 1 else "band",
        # Bands are measurements or class/confidence layers, never RGB(A): without this GDAL
        # would call a 4-band uint8 file RGBA (its last band an alpha mask) and drop the
        # colour table of a 3-band map.
        "photometric": "MINISBLACK",
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "BIGTIFF": "IF_SAFER",
    }
    with atomic_path(path, suffix=".tif") as tmp:
        staging = tmp.with_name(tmp.name + ".gtiff") if cog else tmp
        try:
            with (
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHEMAX_MB),
                rasterio.open(staging, "w", **profile) as dst,
            ):
                yield RasterWriter(dst)
            if cog:
                _to_cog(staging, tmp, profile, overview_resampling)
        finally:
            if cog and staging.exists():
                staging.unlink()
