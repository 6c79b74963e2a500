"""Band-wise normalization fitted on a stream of windows, scikit-learn style.

The normalizer reduces to one affine map per band, ``(x - center) / scale`` followed by a clip
to ``[-clip, clip]``. The model applies that map as its first FP32 operation (DESIGN's one
rule), so this object is only fitted here and then serialized into the bundle; ``transform``
exists for checks and baselines. Nodata pixels are replaced by ``fill_values_`` (= ``center_``,
the raw value that normalizes to 0) before they reach a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from georaster_quant.errors import ConfigError, NotFittedError

MODES = ("zscore", "minmax", "percentile")
#: The fixed clip per mode: z-scores keep ±5 sigma; the range modes map their range to ±1.
DEFAULT_CLIP = {"zscore": 5.0, "minmax": 1.0, "percentile": 1.0}


class BandNormalizer:
    """Per-band statistics from a stream of ``(data, valid)`` windows.

    Args:
        mode: ``zscore`` (mean/std), ``minmax`` (min/max to ±1) or ``percentile``
            (the ``percentiles`` range to ±1, clipped beyond).
        percentiles: Lower and upper percentile for ``percentile`` mode.
        sample_size: Pixels kept per band in a reservoir sample for the percentiles.
        seed: Seed of the reservoir sampler.
    """

    def __init__(
        self,
        mode: str = "zscore",
        percentiles: tuple[float, float] = (2.0, 98.0),
        sample_size: int = 100_000,
        seed: int = 0,
    ):
        self.mode = mode
        self.percentiles = percentiles
        self.sample_size = sample_size
        self.seed = seed

    def _check_params(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"normalization mode must be one of {MODES}, got {self.mode!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {lo}, {hi}")

    def _reset(self) -> None:
        for name in (
            "n_samples_",
            "mean_",
            "m2_",
            "min_",
            "max_",
            "_reservoir",
            "_rng",
            "_restored_percentiles",
            "_restored_affine",
        ):
            self.__dict__.pop(name, None)

    def fit(self, windows: Iterable[tuple[np.ndarray, np.ndarray]]) -> BandNormalizer:
        """Fit from scratch on an iterable of ``(data, valid)`` windows."""
        self._reset()
        for data, valid in windows:
            self.partial_fit(data, valid)
        if not hasattr(self, "n_samples_"):
            raise NotFittedError("no windows were given to fit the band normalizer")
        return self

    def partial_fit(self, data: np.ndarray, valid: np.ndarray | None = None) -> BandNormalizer:
        """Update the statistics with one window (``(C, H, W)``) or batch (``(N, C, H, W)``).

        ``valid`` has the same shape without the band axis; False pixels are ignored.
        """
        self._check_params()
        data = np.asarray(data)
        band_axis = data.ndim - 3
        values = np.moveaxis(data, band_axis, 0).reshape(data.shape[band_axis], -1)
        if valid is not None:
            values = values[:, np.asarray(valid, dtype=bool).reshape(-1)]
        values = values.astype(np.float64)
        values = values[:, ~np.any(np.isnan(values), axis=0)]
        n_new = values.shape[1]
        nb = values.shape[0]
        if not hasattr(self, "n_samples_"):
            self.n_samples_ = 0
            self.mean_ = np.zeros(nb)
            self.m2_ = np.zeros(nb)
            self.min_ = np.full(nb, np.inf)
            self.max_ = np.full(nb, -np.inf)
            self._reservoir = np.empty((nb, 0))
            self._rng = np.random.default_rng(self.seed)
        elif not hasattr(self, "_reservoir"):
            raise NotFittedError("a normalizer restored from a bundle cannot be refitted")
        elif nb != self.mean_.shape[0]:
            raise ConfigError(f"expected {self.mean_.shape[0]} bands, got {nb}")
        if n_new == 0:
            return self
        # Chan et al. parallel update of mean and sum of squared deviations.
        mean_new = values.mean(axis=1)
        m2_new = ((values - mean_new[:, None]) ** 2).sum(axis=1)
        n_old = self.n_samples_
        total = n_old + n_new
        delta = mean_new - self.mean_
        self.mean_ = self.mean_ + delta * n_new / total
        self.m2_ = self.m2_ + m2_new + delta**2 * n_old * n_new / total
        self.min_ = np.minimum(self.min_, values.min(axis=1))
        self.max_ = np.maximum(self.max_, values.max(axis=1))
        self._update_reservoir(values, n_old)
        self.n_samples_ = total
        return self

    def _update_reservoir(self, values: np.ndarray, n_old: int) -> None:
        """Reservoir sampling (algorithm R, vectorized) of whole pixels."""
        k = self.sample_size
        room = max(0, k - self._reservoir.shape[1])
        if room:
            self._reservoir = np.concatenate([self._reservoir, values[:, :room]], axis=1)
        rest = values[:, room:]
        if rest.shape[1] == 0:
            return
        seen = n_old + room + np.arange(rest.shape[1])
        slots = (self._rng.random(rest.shape[1]) * (seen + 1)).astype(np.int64)
        keep = slots < k
        self._reservoir[:, slots[keep]] = rest[:, keep]

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_samples_") or self.n_samples_ == 0:
            raise NotFittedError("the band normalizer is not fitted: call fit() first")

    @property
    def std_(self) -> np.ndarray:
        """Per-band standard deviation of the valid pixels seen."""
        self._check_fitted()
        return np.sqrt(self.m2_ / self.n_samples_)

    @property
    def percentiles_(self) -> np.ndarray:
        """Per-band (low, high) percentiles, shape ``(bands, 2)``."""
        self._check_fitted()
        if not hasattr(self, "_reservoir"):  # restored from a bundle
            return self._restored_percentiles
        return np.percentile(self._reservoir, self.percentiles, axis=1).T

    @property
    def center_(self) -> np.ndarray:
        """Raw value mapped to 0, per band."""
        self._check_fitted()
        if hasattr(self, "_restored_affine"):
            return self._restored_affine[0].copy()
        if self.mode == "zscore":
            return self.mean_.copy()
        lo, hi = self._range()
        return (lo + hi) / 2.0

    @property
    def scale_(self) -> np.ndarray:
        """Raw distance mapped to 1, per band; zero spread is guarded with 1."""
        self._check_fitted()
        if hasattr(self, "_restored_affine"):
            return self._restored_affine[1].copy()
        if self.mode == "zscore":
            scale = self.std_
        else:
            lo, hi = self._range()
            scale = (hi - lo) / 2.0
        tiny = 1e-9 * np.maximum(1.0, np.abs(self.center_))
        return np.where(scale > tiny, scale, 1.0)

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "minmax":
            return self.min_, self.max_
        p = self.percentiles_
        return p[:, 0], p[:, 1]

    @property
    def fill_values_(self) -> np.ndarray:
        """Raw value to put in nodata pixels: the one that normalizes to 0."""
        return self.center_

    @property
    def clip(self) -> float:
        """Fixed clip applied after the affine map."""
        return DEFAULT_CLIP[self.mode]

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Normalize raw values with band axis ``-3``; returns float32."""
        center, scale = self.center_, self.scale_
        shape = (-1, 1, 1)
        out = (np.asarray(data, dtype=np.float64) - center.reshape(shape)) / scale.reshape(shape)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The fitted parameters as plain JSON-ready values (stored in the bundle)."""
        self._check_fitted()
        p = self.percentiles_
        return {
            "mode": self.mode,
            "center": self.center_.tolist(),
            "scale": self.scale_.tolist(),
            "clip": self.clip,
            "stats": {
                "count": int(self.n_samples_),
                "mean": self.mean_.tolist(),
                "std": self.std_.tolist(),
                "min": self.min_.tolist(),
                "max": self.max_.tolist(),
                "percentiles": list(self.percentiles),
                "percentile_low": p[:, 0].tolist(),
                "percentile_high": p[:, 1].tolist(),
            },
        }

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> BandNormalizer:
        """Restore a fitted normalizer from :meth:`to_dict` output."""
        stats = params["stats"]
        self = cls(mode=params["mode"], percentiles=tuple(stats["percentiles"]))
        self._check_params()
        self.n_samples_ = int(stats["count"])
        self.mean_ = np.asarray(stats["mean"], dtype=np.float64)
        self.m2_ = np.asarray(stats["std"], dtype=np.float64) ** 2 * self.n_samples_
        self.min_ = np.asarray(stats["min"], dtype=np.float64)
        self.max_ = np.asarray(stats["max"], dtype=np.float64)
        self._restored_affine = (
            np.asarray(params["center"], dtype=np.float64),
            np.asarray(params["scale"], dtype=np.float64),
        )
        self._restored_percentiles = np.stack(
            [np.asarray(stats["percentile_low"]), np.asarray(stats["percentile_high"])], axis=1
        )
        return self
