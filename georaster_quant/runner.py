"""Large-area inference: a raster in, a georeferenced class map out, in bounded memory.

A reader thread streams batches of tiles (each block of the input decoded once) into a
bounded queue; the calling thread runs the backend; finished rows of output cells go to a
journal of parts beside the output (``.{name}.parts/``, one ``.npz`` per block of output rows,
written atomically). Each batch's decisions are appended to a log there first, so a killed run
resumes where it stopped and infers again at most the batch it was on. When every part is
there the map is assembled window by window into a tiled, compressed GeoTIFF (or a COG with
mode overviews) built beside the output and moved into place at the end, with a QGIS style
(``.qml``) and a run summary (``map.tif.json``) beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import resource
import shutil
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from georaster_quant import __version__
from georaster_quant.area import PixelArea
from georaster_quant.backend import Backend, as_backend, batch_layout
from georaster_quant.bundle import BundleMeta, with_bundle_files
from georaster_quant.contract import open_input
from georaster_quant.errors import ConfigError, GeoRasterQuantError, OutputPathError
from georaster_quant.io import InputPaths, atomic_path, check_output_path, write_raster
from georaster_quant.predict import NODATA_CLASS, CellRows
from georaster_quant.stream import iter_batches
from georaster_quant.tiling import TileGrid

#: Output rows per journal part (and per window of the assembled map).
PART_ROWS = 64
QUEUE_DEPTH = 4
#: A log record's header: magic, tiles, probability rows (0, or the number of classes).
_LOG_HEADER = struct.Struct("<4sII")
_LOG_MAGIC = b"GQL1"


@dataclass(frozen=True)
class PredictOptions:
    """How to run one map."""

    stride: int | None = None
    batch_size: int = 32
    bands: tuple[int, ...] | None = None
    probabilities: bool = False
    cog: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = False


def _parts_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.parts"


def journal_exists(output: str | os.PathLike[str]) -> bool:
    """Whether an interrupted run left a journal for ``output`` to resume from."""
    return _parts_dir(Path(output)).is_dir()


def sidecars(output: Path) -> tuple[Path, Path]:
    """The files written beside a map: its QGIS style and its run summary."""
    return output.with_suffix(".qml"), output.with_name(output.name + ".json")


def check_outputs(
    image: str, output: Path, *, overwrite: bool, inputs: InputPaths | None = None
) -> None:
    """Refuse, before any work, a map or sidecar path that cannot be written.

    None may be an input (``image`` itself, or any of the run's ``inputs``: its other
    images, its weights) or an existing folder, a map may not be named like its own style
    file, and none may exist unless ``overwrite`` (``--overwrite`` or ``--resume``) is given.
    """
    inputs = inputs or InputPaths([image])
    if output in sidecars(output):
        raise OutputPathError(f"{output}: is the name of the map's QGIS style; name it .tif")
    for path in sidecars(output):
        inputs.check(path)
    check_output_path(output, overwrite=overwrite, inputs=inputs)
    for path in sidecars(output):
        if path.is_dir():
            raise OutputPathError(f"{path}: is a folder; the map's sidecar file would replace it")
        if path.exists() and not overwrite:
            raise OutputPathError(f"{path}: already exists (pass --overwrite to replace it)")


def _signature(
    meta: BundleMeta, image: str, grid: TileGrid, opts: PredictOptions, backend: str
) -> str:
    """What a resumed run must share with the run that wrote the journal or the map."""
    st = os.stat(image) if os.path.exists(image) else None
    payload = {
        "weights_sha256": meta.weights_info.sha256,
        "backend": backend,
        "image": os.path.abspath(image) if st else image,
        "image_size": st.st_size if st else None,
        "image_mtime": st.st_mtime_ns if st else None,
        "grid": [grid.height, grid.width, grid.tile_size, grid.step],
        "bands": list(opts.bands) if opts.bands else None,
        "probabilities": opts.probabilities,
        "part_rows": PART_ROWS,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Journal:
    """Finished blocks of output rows, each an ``.npz`` written atomically."""

    def __init__(self, folder: Path, signature: str, resume: bool):
        self.folder = folder
        sig_file = folder / "signature"
        if folder.exists() and resume:
            if not sig_file.is_file() or sig_file.read_text() != signature:
                raise ConfigError(
                    f"{folder}: the interrupted run used other settings, weights, backend or "
                    "input; rerun with --overwrite"
                )
            for log in folder.glob("log_*.bin"):  # new records must not follow a torn one
                with open(log, "r+b") as f:
                    f.truncate(_whole_records_end(f.read()))
        else:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            sig_file.write_text(signature)

    def done(self) -> set[int]:
        """Indexes of the finished parts."""
        return {int(p.stem.split("_")[1]) for p in self.folder.glob("part_*.npz")}

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one part atomically (a kill leaves either the whole part or none).

        Logs up to this part are dropped: a log is named by the part of its batches' last
        tiles, and parts are saved in order, so every tile they hold is in a part now.
        """
        tmp = self.folder / f".part_{index:06d}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.folder / f"part_{index:06d}.npz")
        for log in self.folder.glob("log_*.bin"):
            if int(log.stem.split("_")[1]) <= index:
                log.unlink(missing_ok=True)

    def log(self, rows: np.ndarray, cols: np.ndarray, decided: dict[str, np.ndarray]) -> None:
        """Append one batch's decided tiles (:meth:`CellRows.decide`) to its last part's log.

        The record reaches the operating system before its rows are filed, so a killed process
        loses at most the batch it was inferring; a torn record at the end of a log is ignored
        when it is read and cut off when a run resumes.
        """
        probs = decided.get("probabilities")
        k = 0 if probs is None else probs.shape[0]
        record = [
            _LOG_HEADER.pack(_LOG_MAGIC, len(rows), k),
            rows.astype("<i4").tobytes(),
            cols.astype("<i4").tobytes(),
            decided["classes"].tobytes(),
            decided["confidence"].tobytes(),
        ]
        if k:
            record.append(np.ascontiguousarray(probs).tobytes())
        part = int(rows[-1]) // PART_ROWS
        with open(self.folder / f"log_{part:06d}.bin", "ab") as f:  # close() writes it all
            f.write(b"".join(record))

    def logged(self, k: int) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """The logged tiles of parts not saved yet, in log order: ``(rows, cols, decided)``.

        ``k`` is the number of probability rows the records hold (0 without probabilities).
        """
        saved = self.done()
        for path in sorted(self.folder.glob("log_*.bin")):
            for rows, cols, decided in _log_records(path.read_bytes(), k):
                keep = np.array([r // PART_ROWS not in saved for r in rows.tolist()])
                if keep.any():
                    yield rows[keep], cols[keep], {n: v[..., keep] for n, v in decided.items()}

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of one part (a damaged one is bad input: the run cannot resume)."""
        path = self.folder / f"part_{index:06d}.npz"
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise OutputPathError(
                f"{path}: a damaged part of the interrupted run ({exc}); start again with "
                "--overwrite"
            ) from None


def _record_spans(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(start, tiles, probability rows)`` of each whole record of a log, in order."""
    pos = 0
    while pos + _LOG_HEADER.size <= len(data):
        magic, n, rk = _LOG_HEADER.unpack_from(data, pos)
        start = pos + _LOG_HEADER.size
        end = start + _record_size(n, rk)
        if magic != _LOG_MAGIC or end > len(data):
            return
        yield start, n, rk
        pos = end


def _whole_records_end(data: bytes) -> int:
    """Where the last whole record of a log ends (a torn one may follow)."""
    end = 0
    for start, n, rk in _record_spans(data):
        end = start + _record_size(n, rk)
    return end


def _record_size(n: int, rk: int) -> int:
    """Bytes of a record's body: rows and columns (int32), classes, confidence, probabilities."""
    return n * (4 + 4 + 1 + 1 + rk)


def _log_records(data: bytes, k: int) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """The whole records of a log: ``(rows, cols, decided)``; a torn tail is left out."""
    for start, n, rk in _record_spans(data):
        if rk != k:
            return
        rows = np.frombuffer(data, "<i4", n, start)
        cols = np.frombuffer(data, "<i4", n, start + 4 * n)
        tail = np.frombuffer(data, np.uint8, n * (2 + rk), start + 8 * n)
        decided = {"classes": tail[:n], "confidence": tail[n : 2 * n]}
        if rk:
            decided["probabilities"] = tail[2 * n :].reshape(rk, n)
        yield rows, cols, decided


#: ``ran_on`` of a run classified in this process.
THIS_PROCESS = "this process"


class Inference(Protocol):
    """Where the tiles of a run are classified: this process, or a dask cluster."""

    name: str
    meta: BundleMeta
    #: Where the rows ran, for the run summary: :data:`THIS_PROCESS` or a dask scheduler.
    ran_on: str
    #: The backend a run's signature names; fixed for the run (a cluster knows the workers'
    #: backend only once one reports, so it signs with the requested one).
    signed_as: str

    def rows(
        self, image: str, reader: Any, grid: TileGrid, rows: Sequence[int], opts: PredictOptions
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield ``(row, arrays)`` for each of ``rows`` as it is finished (any order)."""
        ...


class LocalInference:
    """A backend in this process, fed by a reader thread through a bounded queue."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.name = self.signed_as = backend.name
        self.meta = backend.meta
        self.ran_on = THIS_PROCESS

    def rows(
        self,
        image: str,
        reader: Any,
        grid: TileGrid,
        rows: Sequence[int],
        opts: PredictOptions,
        *,
        cells: CellRows | None = None,
        skip: int = 0,
        log: Callable[[np.ndarray, np.ndarray, dict[str, np.ndarray]], None] | None = None,
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Classify ``rows`` of ``reader`` (open on ``image``), reading and inferring at once.

        A resumed run passes the ``cells`` its log filled already and ``skip``, the tiles at
        the start of the first row among them, which are not inferred again. ``log``
        receives each batch's decided tiles before their rows are yielded.
        """
        fill = np.asarray(self.meta.input.fill_values, dtype=np.float32)
        if cells is None:
            cells = CellRows(grid.shape[1], len(self.meta.classes), opts.probabilities)
        q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        stop = threading.Event()
        with _retry_waits_end_on(reader, stop):
            thread = threading.Thread(
                target=_reader_thread,
                args=(reader, grid, fill, opts, rows, skip, batch_layout(self.backend), q, stop),
                daemon=True,
            )
            thread.start()
            try:
                while (item := q.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    decided = cells.decide(item, self.backend(item.data))
                    if log is not None:
                        log(item.rows, item.cols, decided)
                    for row in cells.file(item.rows, item.cols, decided):
                        yield row, cells.pop(row)
            finally:
                _stop_reader(thread, q, stop)


@contextlib.contextmanager
def _retry_waits_end_on(reader: Any, stop: threading.Event) -> Iterator[None]:
    """Meanwhile, ``stop`` also ends a read's retry wait (readers that retry have ``cancel``)."""
    if not hasattr(reader, "cancel"):
        yield
        return
    previous, reader.cancel = reader.cancel, stop
    try:
        yield
    finally:
        reader.cancel = previous


def _reader_thread(
    reader: Any,
    grid: TileGrid,
    fill: np.ndarray,
    opts: PredictOptions,
    rows: Sequence[int],
    skip: int,
    channels_last: bool,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Stream batches of the given output rows into ``out``; an exception is passed on.

    The first ``skip`` tiles of the first row are left out; ``channels_last`` asks for
    band-interleaved batches. Stops early when ``stop`` is set (the consumer failed and
    drains the queue).
    """
    try:
        batches = iter_batches(
            reader, grid, fill, opts.batch_size, rows=rows, skip=skip, channels_last=channels_last
        )
        for batch in batches:
            if stop.is_set():
                return
            out.put(batch)
        out.put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
        out.put(exc)


def _stop_reader(thread: threading.Thread, q: queue.Queue, stop: threading.Event) -> None:
    """Make the reader thread finish: tell it to stop and empty the queue it may block on."""
    stop.set()
    while thread.is_alive():
        try:
            q.get(timeout=0.05)
        except queue.Empty:
            pass
    thread.join()


def predict_raster(
    model: Backend | Inference | str | os.PathLike[str],
    image: str | os.PathLike[str],
    output: str | os.PathLike[str],
    opts: PredictOptions = PredictOptions(),
) -> dict[str, Any]:
    """Classify ``image`` into the class map ``output``; returns the run summary.

    ``model`` is a backend (run here), a bundle folder or exported file (loaded with the
    backend ``auto`` picks) or an :class:`Inference`, e.g. a dask cluster's
    (:class:`georaster_quant.cluster.ClusterInference`).
    """
    from georaster_quant.progress import progress_bar

    if not isinstance(opts, PredictOptions):
        raise ConfigError(f"options must be a PredictOptions, not {type(opts).__name__}")
    t0 = time.perf_counter()
    image = os.fspath(image)
    out = Path(output)
    if opts.resume and opts.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    weights = [model] if isinstance(model, str | os.PathLike) else []
    inputs = InputPaths(with_bundle_files([image, *weights]))
    check_outputs(image, out, overwrite=opts.overwrite or opts.resume, inputs=inputs)
    complete = out.exists() and not journal_exists(out)
    inference = _inference(model)
    meta = inference.meta
    with open_input(image, meta, opts.bands) as reader:
        info = reader.info
        grid = meta.input.grid(info.height, info.width, opts.stride)
        signature = _signature(meta, image, grid, opts, inference.signed_as)
        if opts.resume and complete:
            return _finished_run(out, signature)
        journal = Journal(_parts_dir(out), signature, opts.resume)
        n_rows, n_cols = grid.shape
        n_parts = -(-n_rows // PART_ROWS)
        todo = [p for p in range(n_parts) if p not in journal.done()]
        rows = [r for p in todo for r in range(p * PART_ROWS, min((p + 1) * PART_ROWS, n_rows))]
        pending: dict[int, dict[str, np.ndarray]] = {}
        local = isinstance(inference, LocalInference)
        cells, skip = None, 0
        if local and opts.resume:  # rows and the first row's tiles the log holds
            pending, cells, skip = _from_log(journal, rows, n_cols, len(meta.classes), opts)
            rows = [r for r in rows if r not in pending]
            for part in sorted({r // PART_ROWS for r in pending}):
                _flush_if_complete(part, pending, journal, n_rows)
        inferred = len(rows) * n_cols - skip
        bar = progress_bar(
            total=inferred, unit="tile", desc=Path(image).name, enabled=opts.progress
        )
        more = {"cells": cells, "skip": skip, "log": journal.log} if local else {}
        finished = inference.rows(image, reader, grid, rows, opts, **more)
        try:
            for row, arrays in finished:
                pending[row] = arrays
                _flush_if_complete(row // PART_ROWS, pending, journal, n_rows)
                bar.update(n_cols - (skip if row == rows[0] else 0))
                bar.set_postfix(
                    mpx_s=f"{_mpx(bar.n, grid) / max(bar.format_dict['elapsed'], 1e-9):.1f}"
                )
        except GeoRasterQuantError:
            # Bad input (e.g. a read error that persists): resuming cannot help, so no journal
            # is kept. Any other interruption keeps it for --resume.
            finished.close()
            shutil.rmtree(journal.folder, ignore_errors=True)
            raise
        finally:
            bar.close()
            finished.close()
        transform = grid.output_transform(info.transform)
        crs = info.crs
        pixel_area = PixelArea.of(info.transform, crs)
    pixels, m2 = _assemble(
        out, journal, grid, meta, n_parts, transform, crs, opts, inference, pixel_area
    )
    seconds = time.perf_counter() - t0
    summary = {
        "input": image,
        "output": os.fspath(out),
        "weights_sha256": meta.weights_info.sha256,
        "quant_type": meta.quant_type,
        "backend": inference.name,
        "ran_on": inference.ran_on,
        "stride": grid.step,
        "tile_size": grid.tile_size,
        "grid": list(grid.shape),
        "tiles_total": len(grid),
        "tiles_inferred": inferred,
        "resumed": bool(opts.resume and inferred < len(grid)),
        "seconds": seconds,
        "mpx_per_s": grid.height * grid.width / 1e6 / max(seconds, 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # Input pixels per class, and their ground area (null without a CRS).
        "area_per_class": {
            c.name: {
                "pixels": int(n),
                "m2": float(a) if pixel_area.known else None,
                "ha": float(a / 1e4) if pixel_area.known else None,
            }
            for c, n, a in zip(meta.classes, pixels, m2, strict=True)
        },
        "area_method": pixel_area.kind,
        "package_version": __version__,
        "run_signature": signature,
    }
    with atomic_path(sidecars(out)[1]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(journal.folder, ignore_errors=True)
    return summary


def _from_log(
    journal: Journal, rows: list[int], n_cols: int, k: int, opts: PredictOptions
) -> tuple[dict[int, dict[str, np.ndarray]], CellRows, int]:
    """What an interrupted run's log holds of ``rows``, filed as the run files batches.

    Returns the whole rows, the cells holding the rest, and how many tiles at the start of the
    first row still missing are decided (only such a run of tiles is skipped; other tiles are
    inferred again and overwrite theirs).
    """
    cells = CellRows(n_cols, k, opts.probabilities)
    whole = {}
    for logged_rows, cols, decided in journal.logged(k if opts.probabilities else 0):
        for r in cells.file(logged_rows, cols, decided):
            whole[r] = cells.pop(r)
    rest = [r for r in rows if r not in whole]
    return whole, cells, cells.decided_prefix(rest[0]) if rest else 0


def _inference(model: Backend | Inference | str | os.PathLike[str]) -> Inference:
    if hasattr(model, "rows"):
        return model  # type: ignore[return-value]
    return LocalInference(as_backend(model))  # type: ignore[arg-type]


def run_signature(
    model: Backend | Inference | str | os.PathLike[str],
    image: str | os.PathLike[str],
    opts: PredictOptions,
) -> str:
    """The ``run_signature`` :func:`predict_raster` records for this run.

    It checks a map published elsewhere (an ``s3://`` output) before ``--resume`` skips it.
    """
    inference = _inference(model)
    with open_input(os.fspath(image), inference.meta, opts.bands) as reader:
        grid = inference.meta.input.grid(reader.info.height, reader.info.width, opts.stride)
    return _signature(inference.meta, os.fspath(image), grid, opts, inference.signed_as)


def _finished_run(out: Path, signature: str) -> dict[str, Any]:
    """``--resume`` of a finished map: its summary, marked skipped, if the same run made it."""
    try:
        summary = json.loads(sidecars(out)[1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    if not isinstance(summary, dict) or "run_signature" not in summary:
        raise OutputPathError(
            f"{out}: already complete, with no run summary saying how it was made (missing, or "
            "from an older version); rerun with --overwrite"
        )
    if summary["run_signature"] != signature:
        raise OutputPathError(
            f"{out}: already complete, but not by this run (other settings, weights, backend or "
            "input); rerun with --overwrite"
        )
    return {**summary, "skipped": True}


def _mpx(tiles: int, grid: TileGrid) -> float:
    return tiles * grid.step * grid.step / 1e6


def _flush_if_complete(
    part: int, pending: dict[int, dict[str, np.ndarray]], journal: Journal, n_rows: int
) -> None:
    rows = range(part * PART_ROWS, min((part + 1) * PART_ROWS, n_rows))
    if not all(r in pending for r in rows):
        return
    block = [pending.pop(r) for r in rows]
    journal.save(
        part,
        {
            "classes": np.stack([b["classes"] for b in block]),
            "confidence": np.stack([b["confidence"] for b in block]),
            "probabilities": np.stack([b["probabilities"] for b in block], axis=1),
        },
    )


def _assemble(
    out: Path,
    journal: Journal,
    grid: TileGrid,
    meta: Any,
    n_parts: int,
    transform: Any,
    crs: str | None,
    opts: PredictOptions,
    inference: Inference,
    pixel_area: PixelArea,
) -> tuple[np.ndarray, np.ndarray]:
    """Write the map from the journal's parts; returns input pixels and m² per class."""
    from georaster_quant.tiling import Window

    k = len(meta.classes)
    n_rows, n_cols = grid.shape
    names = [c.name for c in meta.classes]
    band_names = ["class", "confidence"] + ([f"p_{n}" for n in names] if opts.probabilities else [])
    counts = np.zeros(k, dtype=np.int64)
    m2 = np.zeros(k, dtype=np.float64)
    cell_w = np.minimum(grid.step, grid.width - np.arange(n_cols) * grid.step)
    col_mid = np.arange(n_cols) * grid.step + cell_w / 2
    blocksize = 256 if max(n_rows, n_cols) > 512 else 64 if max(n_rows, n_cols) > 64 else 16
    with write_raster(
        out,
        width=n_cols,
        height=n_rows,
        count=len(band_names),
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=NODATA_CLASS,
        blocksize=blocksize,
        cog=opts.cog,
        overview_resampling="mode",
    ) as dst:
        dst.set_band_names(band_names)
        dst.write_colormap(1, {i: tuple(c.color) for i, c in enumerate(meta.classes)})
        dst.update_tags(
            CLASSES=",".join(names),
            BUNDLE_WEIGHTS_SHA256=meta.weights_info.sha256,
            MODEL_NAME=meta.model_name,
            QUANT_TYPE=meta.quant_type,
            BACKEND=inference.name,
            STRIDE=grid.step,
            TILE_SIZE=grid.tile_size,
            GENERATOR=f"georaster_quant {__version__}",
        )
        dst.update_tags(1, CLASSES=",".join(names), NODATA="255")
        dst.update_tags(2, UNITS="percent")
        for part in range(n_parts):
            arrays = journal.load(part)
            r0 = part * PART_ROWS
            h = arrays["classes"].shape[0]
            stack = [arrays["classes"][None], arrays["confidence"][None]]
            if opts.probabilities:
                stack.append(arrays["probabilities"])
            dst[Window(r0, 0, h, n_cols)] = np.concatenate(stack, axis=0)
            cell_h = np.minimum(grid.step, grid.height - (r0 + np.arange(h)) * grid.step)
            pixels = cell_h[:, None] * cell_w[None, :]
            row_mid = (r0 + np.arange(h)) * grid.step + cell_h / 2
            ground = pixels * pixel_area.at(row_mid[:, None], col_mid[None, :])
            cls = arrays["classes"]
            for i in range(k):
                counts[i] += int(pixels[cls == i].sum())
                m2[i] += float(ground[cls == i].sum())
    _write_qml(sidecars(out)[0], meta)
    return counts, m2


def _write_qml(path: Path, meta: Any) -> None:
    """A QGIS paletted style for band 1 with the class names and colours."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="#{c.color[0]:02x}{c.color[1]:02x}'
        f'{c.color[2]:02x}" alpha="255" label={quoteattr(c.name)}/>'
        for i, c in enumerate(meta.classes)
    )
    text = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
