"""Backends: a float32 batch of raw band values in, class probabilities out.

Every backend takes raw values in the bundle's band order with nodata already replaced by the
bundle's fill values; normalization happens inside the model (DESIGN's one rule).
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

import numpy as np

from georaster_quant.bundle import Bundle, BundleMeta
from georaster_quant.errors import ConfigError
from georaster_quant.threads import available_cores

BACKENDS = ("auto", "torch")


class Backend(Protocol):
    """What the runner and the evaluator need from a model."""

    name: str
    meta: BundleMeta
    size_bytes: int

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` for a raw batch ``(N, C, T, T)``."""
        ...


class TorchBackend:
    """Eager PyTorch on a loaded bundle."""

    name = "torch"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        import torch

        self._torch = torch
        self.bundle = bundle
        self.meta = bundle.meta
        self.size_bytes = bundle.size_bytes
        torch.set_num_threads(threads or available_cores())
        self._quiet = contextlib.nullcontext
        if self.meta.quant_type != "fp32":  # quantized kernels warn that they are deprecated
            from georaster_quant.quantize import quiet

            self._quiet = quiet

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities of the bundle's model."""
        torch = self._torch
        with self._quiet(), torch.inference_mode():
            logits = self.bundle.model(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()


def open_backend(
    weights: str | os.PathLike[str], backend: str = "auto", threads: int | None = None
) -> Backend:
    """Load ``weights`` (a bundle folder) behind the requested backend."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return TorchBackend(Bundle(weights), threads=threads)
