"""The evaluation report: PNG figures and an HTML page comparing models on one raster.

Figures: a confusion matrix per model, where each model's decisions differ from the first
model's (the FP32-vs-quantized disagreement map, also written as a georeferenced GeoTIFF),
the per-layer sensitivity ranking recorded when a static INT8 bundle was made, and size and
latency bars. The folder is built beside
its destination and moved into place when complete.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from georaster_quant.bundle import with_bundle_files
from georaster_quant.evaluation import ModelScore
from georaster_quant.io import atomic_path, check_output_path, read_info, write_raster
from georaster_quant.predict import NODATA_CLASS, disagreement_map
from georaster_quant.tiling import Window

#: The file that marks a folder as a report this tool wrote (and may replace).
REPORT_MARKER = ".georaster-quant-report"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(score: ModelScore, i: int) -> str:
    return f"{i + 1}: {Path(score.result['weights']).name} ({score.result['quant_type']})"


def confusion_figure(score: ModelScore, path: Path, title: str) -> None:
    """Row-normalized confusion matrix with counts."""
    plt = _plt()
    cm = np.asarray(score.result["confusion"], dtype=np.float64)
    names = score.result["classes"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(cm):
        ax.text(
            c,
            r,
            f"{int(v)}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if norm[r, c] > 0.5 else "black",
        )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label (cell majority)")
    ax.set_title(f"{title}\naccuracy {score.result['accuracy']:.2%}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def disagreement_figure(first: ModelScore, other: ModelScore, path: Path, title: str) -> None:
    """Where ``other`` decides differently from ``first``, over ``first``'s class map."""
    plt = _plt()
    colors = np.array([c.color for c in first.meta.classes] + [(0, 0, 0)], dtype=np.float64)
    classes = first.prediction.classes.astype(np.int64)
    classes[classes == NODATA_CLASS] = len(colors) - 1
    diff = disagreement_map(first.prediction.classes, other.prediction.classes)
    fig, ax = plt.subplots(1, 2, figsize=(11, 5))
    ax[0].imshow(colors[classes] / 255, interpolation="nearest")
    ax[0].set_title("decisions of model 1", fontsize=9)
    shown = np.ma.masked_where(diff == 255, diff)
    ax[1].imshow(shown, cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
    ax[1].set_title(
        f"{title}: {int((diff == 1).sum())} of {int((diff != 255).sum())} cells differ", fontsize=9
    )
    for a in ax:
        a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def disagreement_raster(first: ModelScore, other: ModelScore, image: str, path: Path) -> None:
    """The disagreement map as a GeoTIFF on the prediction grid of ``image``."""
    info = read_info(image)
    grid = first.prediction.grid
    diff = disagreement_map(first.prediction.classes, other.prediction.classes)
    with write_raster(
        path,
        width=diff.shape[1],
        height=diff.shape[0],
        count=1,
        dtype="uint8",
        crs=info.crs,
        transform=grid.output_transform(info.transform),
        nodata=NODATA_CLASS,
        blocksize=256 if max(diff.shape) > 512 else 16,
    ) as dst:
        dst.set_band_names(["decision_changed"])
        dst.update_tags(1, VALUES="0 agree, 1 differ, 255 nodata in either map")
        dst[Window(0, 0, *diff.shape)] = diff[None]


def sensitivity_figure(score: ModelScore, path: Path) -> bool:
    """Bars of the accuracy drop when only one layer is quantized; False if not recorded."""
    ranking = score.meta.quantization.details.get("sensitivity")
    if not ranking:
        return False
    plt = _plt()
    layers = [r["layer"] for r in ranking][::-1]
    fig, ax = plt.subplots(1, 2, figsize=(10, 0.5 * len(layers) + 1.8), sharey=True)
    ax[0].barh(layers, [r["drop_pp"] for r in ranking][::-1], color="tab:red")
    ax[0].set_xlabel("accuracy drop (pp)")
    ax[1].barh(layers, [100 * r["disagreement"] for r in ranking][::-1], color="tab:purple")
    ax[1].set_xlabel("decisions changed (%)")
    kept = score.meta.quantization.fp32_layers
    title = "only this layer quantized (most sensitive on top)"
    fig.suptitle(f"{title}; kept in FP32: {', '.join(kept) or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def size_latency_figure(scores: list[ModelScore], path: Path) -> None:
    """Weight size and latency per batch of every model."""
    plt = _plt()
    names = [f"{i + 1}: {s.result['quant_type']}" for i, s in enumerate(scores)]
    fig, ax = plt.subplots(1, 2, figsize=(11, 0.5 * len(scores) + 2))
    ax[0].barh(names[::-1], [s.result["size_bytes"] / 1024 for s in scores][::-1])
    ax[0].set_xlabel("weights (KiB)")
    ax[1].barh(
        names[::-1], [s.result["latency_ms_per_batch"] for s in scores][::-1], color="tab:orange"
    )
    ax[1].set_xlabel(f"ms per batch of {scores[0].result['batch_size']} tiles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    folder: str | os.PathLike[str], scores: list[ModelScore], image: str, labels: str
) -> Path:
    """Write the figures and ``index.html`` into ``folder`` (replacing it) and return it."""
    inputs = with_bundle_files([image, labels, *(s.result["weights"] for s in scores)])
    out = check_output_path(
        folder, overwrite=True, folder=True, marker=REPORT_MARKER, inputs=inputs
    )
    with atomic_path(out, marker=REPORT_MARKER) as tmp:
        tmp.mkdir()
        (tmp / REPORT_MARKER).write_text("written by georaster-quant evaluate --report\n")
        figures: list[tuple[str, str]] = []
        for i, s in enumerate(scores):
            name = f"confusion_{i + 1}.png"
            confusion_figure(s, tmp / name, _label(s, i))
            figures.append((name, f"Confusion matrix of {_label(s, i)}"))
        for i, s in enumerate(scores[1:], start=1):
            name = f"disagreement_1_vs_{i + 1}.png"
            disagreement_figure(scores[0], s, tmp / name, f"model {i + 1} vs model 1")
            figures.append((name, f"Where {_label(s, i)} decides differently from model 1"))
            disagreement_raster(scores[0], s, image, tmp / name.replace(".png", ".tif"))
        for i, s in enumerate(scores):
            name = f"sensitivity_{i + 1}.png"
            if sensitivity_figure(s, tmp / name):
                figures.append((name, f"Per-layer sensitivity of {_label(s, i)}"))
        size_latency_figure(scores, tmp / "size_latency.png")
        figures.append(("size_latency.png", "Weight size and latency per batch"))
        (tmp / "index.html").write_text(_html(scores, figures, image, labels), encoding="utf-8")
    return out


def _html(scores: list[ModelScore], figures: list[tuple[str, str]], image: str, labels: str) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{e(s.result['weights'])}</td><td>{e(s.result['quant_type'])}"
        f"</td><td>{s.result['accuracy']:.2%}</td><td>{s.result['macro_f1']:.3f}</td>"
        f"<td>{s.result['agreement']:.2%}</td><td>{s.result['size_bytes']:,}</td>"
        f"<td>{s.result['latency_ms_per_batch']:.2f}</td><td>{s.result['cells']}</td></tr>"
        for i, s in enumerate(scores)
    )
    figs = "".join(
        f'<figure><img src="{e(name)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
        for name, cap in figures
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>georaster-quant evaluation"
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:1em}img{max-width:900px}</style></head><body>"
        f"<h1>Evaluation</h1><p>Image <code>{e(image)}</code>, labels <code>{e(labels)}</code>, "
        f"stride {scores[0].result['stride']} px; agreement is with model 1.</p>"
        "<table><tr><th>#</th><th>weights</th><th>quant type</th><th>accuracy</th>"
        "<th>macro F1</th><th>agreement</th><th>size (B)</th><th>ms/batch</th><th>cells</th>"
        f"</tr>{rows}</table>{figs}</body></html>\n"
    )
