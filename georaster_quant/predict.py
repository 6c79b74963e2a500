"""Predicting the classes of every cell of a raster's prediction grid."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from georaster_quant.backend import Backend, as_backend, batch_layout
from georaster_quant.contract import open_input
from georaster_quant.errors import BandMismatchError, RasterContractError
from georaster_quant.stream import TileBatch, iter_batches
from georaster_quant.tiling import TileGrid

NODATA_CLASS = 255
#: Anything with ``info`` and ``read(window)``: a RasterReader or a DataArrayReader.
Reader = Any
#: A cell whose footprint has less than this valid share is nodata.
MIN_VALID_FRACTION = 0.5


@dataclass
class GridPrediction:
    """Decisions for every cell of a grid (held in memory: evaluation-sized grids)."""

    grid: TileGrid
    classes: np.ndarray  # (rows, cols) uint8, NODATA_CLASS where the cell is nodata
    confidence: np.ndarray  # (rows, cols) float32 probability of the chosen class
    batch_seconds: list[float] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        """Cells that have a decision."""
        return self.classes != NODATA_CLASS

    @property
    def latency_ms_per_batch(self) -> float:
        """Median time of one backend call, in milliseconds."""
        return float(np.median(self.batch_seconds) * 1000) if self.batch_seconds else 0.0


def predict_grid(
    backend: Backend | str | os.PathLike[str],
    image: str | os.PathLike[str] | Reader,
    *,
    stride: int | None = None,
    batch_size: int = 32,
    bands: Sequence[int] | None = None,
    progress: bool = False,
) -> GridPrediction:
    """Classify every cell of ``image``'s prediction grid with ``backend``.

    ``backend`` is a loaded backend, or a bundle folder or exported file to load. ``image`` is
    a path (opened with :func:`open_input`, so ``bands`` applies) or an open reader whose
    bands are already in the model's order.
    """
    from georaster_quant.progress import progress_bar

    backend = as_backend(backend)
    meta = backend.meta
    if isinstance(image, str | os.PathLike):
        with open_input(image, meta, bands) as reader:
            return predict_grid(
                backend, reader, stride=stride, batch_size=batch_size, progress=progress
            )
    reader = image
    if reader.info.count != len(meta.input.bands):
        raise BandMismatchError(
            f"{reader.info.path}: has {reader.info.count} band(s) but the model takes "
            f"{len(meta.input.bands)}"
        )
    grid = meta.input.grid(reader.info.height, reader.info.width, stride)
    classes = np.full(grid.shape, NODATA_CLASS, dtype=np.uint8)
    confidence = np.zeros(grid.shape, dtype=np.float32)
    seconds: list[float] = []
    fill = np.asarray(meta.input.fill_values, dtype=np.float32)
    batches = iter_batches(reader, grid, fill, batch_size, channels_last=batch_layout(backend))
    with progress_bar(total=len(grid), unit="tile", desc="predict", enabled=progress) as bar:
        for batch in batches:
            t0 = time.perf_counter()
            probs = backend(batch.data)
            seconds.append(time.perf_counter() - t0)
            keep = batch.valid_fraction >= MIN_VALID_FRACTION
            r, c = batch.rows[keep], batch.cols[keep]
            classes[r, c] = probs[keep].argmax(axis=1)
            confidence[r, c] = probs[keep].max(axis=1)
            bar.update(len(batch))
    return GridPrediction(grid, classes, confidence, seconds)


class CellRows:
    """Output rows filled in as batches of decisions come back, as the map stores them.

    Per row: ``classes`` (uint8, :data:`NODATA_CLASS` where the cell is mostly nodata),
    ``confidence`` and, with ``probabilities``, ``probabilities`` ``(K, cols)`` in percent.
    The rows span output columns ``[col0, col0 + n_cols)``.
    """

    def __init__(self, n_cols: int, num_classes: int, probabilities: bool, col0: int = 0):
        self.n_cols, self.k, self.col0 = n_cols, num_classes, col0
        self.probabilities = probabilities
        self._rows: dict[int, dict[str, np.ndarray]] = {}

    def _new_row(self) -> dict[str, np.ndarray]:
        n, k = self.n_cols, self.k if self.probabilities else 0
        return {
            "classes": np.full(n, NODATA_CLASS, np.uint8),
            "confidence": np.full(n, NODATA_CLASS, np.uint8),
            "probabilities": np.full((k, n), NODATA_CLASS, np.uint8),
            "filled": np.zeros(n, bool),
        }

    def decide(self, batch: TileBatch, probs: np.ndarray) -> dict[str, np.ndarray]:
        """The map's uint8 values for each tile of a batch.

        ``classes`` and ``confidence`` ``(n,)`` and, with ``probabilities``,
        ``probabilities`` ``(K, n)``; mostly-nodata cells get :data:`NODATA_CLASS`.
        """
        keep = batch.valid_fraction >= MIN_VALID_FRACTION
        conf = np.rint(probs.max(axis=1) * 100)
        decided = {
            "classes": np.where(keep, probs.argmax(axis=1), NODATA_CLASS).astype(np.uint8),
            "confidence": np.where(keep, conf, NODATA_CLASS).astype(np.uint8),
        }
        if self.probabilities:
            pct = np.where(keep[:, None], np.rint(probs * 100), NODATA_CLASS)
            decided["probabilities"] = pct.astype(np.uint8).T
        return decided

    def file(self, rows: np.ndarray, cols: np.ndarray, decided: dict[str, np.ndarray]) -> list[int]:
        """File decided tiles at output ``(rows, cols)``; returns the rows they completed."""
        done = []
        for r in np.unique(rows).tolist():
            sel = rows == r
            row = self._rows.get(r)
            if row is None:
                row = self._rows[r] = self._new_row()
            c = cols[sel] - self.col0
            row["classes"][c] = decided["classes"][sel]
            row["confidence"][c] = decided["confidence"][sel]
            if self.probabilities:
                row["probabilities"][:, c] = decided["probabilities"][:, sel]
            row["filled"][c] = True
            if row["filled"].all():
                done.append(r)
        return done

    def add(self, batch: TileBatch, probs: np.ndarray) -> list[int]:
        """File a batch's class probabilities; returns the rows it completed."""
        return self.file(batch.rows, batch.cols, self.decide(batch, probs))

    def decided_prefix(self, row: int) -> int:
        """How many tiles from the start of ``row`` are filed, when none past them is (else 0)."""
        state = self._rows.get(row)
        if state is None:
            return 0
        m = int(np.argmin(state["filled"]))  # the first tile not filed
        return 0 if state["filled"][m:].any() else m

    def pop(self, row: int) -> dict[str, np.ndarray]:
        """Take a finished row out: ``classes``, ``confidence``, ``probabilities``."""
        arrays = self._rows.pop(row)
        del arrays["filled"]
        return arrays


def _same_grid(a: Any, b: Any) -> bool:
    """Same dims and shape, and x/y coordinates equal to a millionth of a cell."""
    if a.dims != b.dims or a.shape != b.shape:
        return False
    for dim in a.dims:
        if dim in a.coords and dim in b.coords:
            u, v = np.asarray(a[dim], float), np.asarray(b[dim], float)
            cell = abs(u[1] - u[0]) if len(u) > 1 else 1.0
            if not np.allclose(u, v, rtol=0, atol=1e-6 * cell):
                return False
    return True


def disagreement_map(a: Any, b: Any) -> Any:
    """Where two class maps decide differently: 1 differs, 0 agrees, 255 either is nodata.

    ``a`` and ``b`` are class arrays of one grid: numpy arrays, ``class`` DataArrays (a lazy
    input gives a lazy map with the same coordinates) or Datasets from
    :func:`georaster_quant.lazy.predict_dataarray` (their ``class`` is used). Typical use:
    an FP32 and an INT8 bundle on the same scene, to see where quantization changed decisions.
    """
    a, b = (x["class"] if hasattr(x, "data_vars") else x for x in (a, b))
    xarray_maps = hasattr(a, "dims") and hasattr(b, "dims")
    if xarray_maps:  # xarray would silently keep the overlap
        import xarray as xr

        if not _same_grid(a, b):
            raise RasterContractError(
                "the two maps are on different grids (coordinates differ); compare maps of "
                "one scene at one stride"
            )
        a, b = xr.align(a, b, join="override")  # coordinates equal up to rounding
    elif np.shape(a) != np.shape(b):
        raise RasterContractError(
            f"the two maps differ in shape ({np.shape(a)} and {np.shape(b)}); compare maps of "
            "one scene at one stride"
        )
    nodata = (a == NODATA_CLASS) | (b == NODATA_CLASS)
    diff = (a != b).astype(np.uint8) | nodata.astype(np.uint8) * np.uint8(NODATA_CLASS)
    if xarray_maps:  # its own meaning, not the class map's
        diff = diff.rename("decision_changed")
        diff.attrs = {
            "long_name": "decision_changed",
            "flag_values": [0, 1],
            "flag_meanings": "agree differ",
            "_FillValue": NODATA_CLASS,
        }
    return diff
