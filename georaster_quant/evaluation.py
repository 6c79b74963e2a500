"""Scoring models on every cell of the prediction grid against a label raster."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from georaster_quant.backend import open_backend, read_model_meta
from georaster_quant.bundle import BundleMeta
from georaster_quant.contract import open_input
from georaster_quant.errors import ConfigError, RasterContractError
from georaster_quant.io import RasterReader
from georaster_quant.metrics import confusion_matrix, summary
from georaster_quant.predict import MIN_VALID_FRACTION, NODATA_CLASS, GridPrediction, predict_grid
from georaster_quant.sampling import check_label_grid, check_label_values, majority_labels
from georaster_quant.stream import iter_row_strips
from georaster_quant.tiling import TileGrid, tiles_from_strip


def cell_labels(labels: RasterReader, stride: int, num_classes: int) -> np.ndarray:
    """Majority label of each cell's footprint at ``stride``; -1 where mostly unlabelled."""
    grid = TileGrid(labels.info.height, labels.info.width, stride, stride)
    out = np.full(grid.shape, -1, dtype=np.int64)
    for row, lab, valid in iter_row_strips(labels, grid):
        check_label_values(lab[0], valid, num_classes, labels.info.path)
        # Mirrored pixels past the edge do not count; an edge cell's area is what is inside.
        h = min(stride, grid.height - row * stride)
        widths = np.minimum(stride, grid.width - np.arange(grid.shape[1]) * stride)
        valid = valid.copy()
        valid[h:] = False
        valid[:, grid.width :] = False
        out[row] = majority_labels(
            tiles_from_strip(lab[0], grid),
            tiles_from_strip(valid, grid),
            num_classes,
            MIN_VALID_FRACTION,
            area=h * widths,
        )
    return out


@dataclass
class ModelScore:
    """One model's evaluation: the JSON result, its cell decisions and its metadata."""

    result: dict[str, Any]
    prediction: GridPrediction
    meta: BundleMeta


def score_models(
    weights: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    image: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    stride: int | None = None,
    batch_size: int = 32,
    bands: Sequence[int] | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> tuple[list[ModelScore], np.ndarray]:
    """Score each model on every grid cell; also returns the cells' majority labels.

    ``weights`` is a list of bundle folders or exported files, or one of them.
    """
    if isinstance(weights, str | os.PathLike):
        weights = [weights]
    if not weights:
        raise ConfigError("no models to score: give at least one bundle or exported file")
    metas = [read_model_meta(w) for w in weights]  # every model's grid checked before work
    if stride is None:  # the first model's grid for every model
        stride = metas[0].input.default_stride
    for w, meta in zip(weights, metas, strict=True):
        if not 1 <= stride <= meta.input.tile_size:
            raise ConfigError(
                f"{w}: its {meta.input.tile_size} px tiles cannot step {stride} px (the "
                "stride asked for, or the first model's); pass a --stride that fits every model"
            )
    scores: list[ModelScore] = []
    first_pred: np.ndarray | None = None
    truth: np.ndarray | None = None
    for w in weights:
        model = open_backend(w, backend)
        meta = model.meta
        k = len(meta.classes)
        with open_input(image, meta, bands) as img:  # bands are checked first
            if truth is None:  # then the labels, before any prediction
                with RasterReader(labels) as lab:
                    check_label_grid(img, lab)
                    truth = cell_labels(lab, stride, k)
                if not (truth >= 0).any():
                    raise RasterContractError(f"{labels}: no labelled cells to score")
            elif truth.max(initial=-1) >= k:
                raise RasterContractError(f"{w}: has {k} classes, fewer than the labels use")
            pred = predict_grid(model, img, stride=stride, batch_size=batch_size, progress=progress)
        scored = (truth >= 0) & pred.valid
        if not scored.any():
            raise RasterContractError(f"{image}: every labelled cell is nodata; nothing to score")
        cm = confusion_matrix(truth[scored], pred.classes[scored], k)
        if first_pred is None:
            first_pred = pred.classes
        both = pred.valid & (first_pred != NODATA_CLASS)
        agreement = float((pred.classes[both] == first_pred[both]).mean()) if both.any() else 0.0
        result = {
            "weights": os.fspath(w),
            "quant_type": meta.quant_type,
            **summary(cm),
            "confusion": cm.tolist(),
            "classes": meta.class_names,
            "size_bytes": _weights_bytes(w, meta, model.size_bytes),
            "agreement": agreement,
            "cells": int(scored.sum()),
            "stride": pred.grid.step,
            "backend": model.name,
            "latency_ms_per_batch": pred.latency_ms_per_batch,
            "batch_size": batch_size,
        }
        scores.append(ModelScore(result, pred, meta))
    return scores, truth  # type: ignore[return-value] - set by the first model


def _weights_bytes(weights: str | os.PathLike[str], meta: BundleMeta, loaded: int) -> int:
    """Bytes of a bundle's weight file (whichever backend ran it), else of the file given."""
    folder = Path(weights)
    return (folder / meta.weights_info.file).stat().st_size if folder.is_dir() else loaded


def evaluate(
    weights: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    image: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    **options: Any,
) -> list[dict[str, Any]]:
    """Score each model; results follow the ``evaluate --json`` schema (README.md).

    Options are those of :func:`score_models` (``stride``, ``batch_size``, ``bands``,
    ``backend``, ``progress``).
    """
    scores, _ = score_models(weights, image, labels, **options)
    return [s.result for s in scores]
