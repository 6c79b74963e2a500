"""Classification metrics from a confusion matrix (rows: truth, columns: prediction)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (truth, prediction) pairs over ``num_classes`` classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (truth.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 per class; 0 for a class with no truth and no prediction."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def summary(cm: np.ndarray) -> dict[str, float | list[float]]:
    """Accuracy, macro F1 over the classes present in the truth, and per-class F1."""
    total = cm.sum()
    f1 = per_class_f1(cm)
    present = cm.sum(axis=1) > 0
    return {
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": f1.tolist(),
    }
