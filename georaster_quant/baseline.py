"""A spectral-only reference classifier: Gaussian classes on per-band tile means.

It answers "how far does colour alone get?" on a scene. A CNN that does not clearly beat it
has not learned texture or context; the synthetic scenes are built so that it cannot reach
the CNN's accuracy.
"""

from __future__ import annotations

import numpy as np

from georaster_quant.errors import NotFittedError


def tile_means(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band mean of the valid pixels of each tile: ``(N, C, T, T) -> (N, C)``."""
    w = valid[:, None].astype(np.float64)
    return (data * w).sum(axis=(2, 3)) / np.maximum(w.sum(axis=(2, 3)), 1.0)


class SpectralMeanClassifier:
    """Quadratic discriminant analysis on per-band tile means (log reflectance)."""

    def __init__(self, reg: float = 1e-3):
        self.reg = reg

    def fit(self, features: np.ndarray, labels: np.ndarray) -> SpectralMeanClassifier:
        """Fit one Gaussian per class present in ``labels``."""
        x = np.log1p(np.maximum(features, 0))
        self.classes_ = np.unique(labels)
        self.means_, self.precisions_, self.logdets_, self.priors_ = [], [], [], []
        for c in self.classes_:
            xc = x[labels == c]
            cov = np.cov(xc, rowvar=False) if len(xc) > 1 else np.eye(x.shape[1])
            cov = np.atleast_2d(cov) + self.reg * np.eye(x.shape[1])
            self.means_.append(xc.mean(axis=0))
            self.precisions_.append(np.linalg.inv(cov))
            self.logdets_.append(np.linalg.slogdet(cov)[1])
            self.priors_.append(len(xc) / len(x))
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Most likely class per row of ``features``."""
        if not hasattr(self, "classes_"):
            raise NotFittedError("the spectral classifier is not fitted: call fit() first")
        x = np.log1p(np.maximum(features, 0))
        scores = []
        for m, p, ld, pr in zip(
            self.means_, self.precisions_, self.logdets_, self.priors_, strict=True
        ):
            d = x - m
            scores.append(-0.5 * np.einsum("ij,jk,ik->i", d, p, d) - 0.5 * ld + np.log(pr))
        return self.classes_[np.argmax(np.stack(scores, axis=1), axis=1)]
