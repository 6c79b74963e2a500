"""``georaster-quant evaluate``: score models on every cell of the prediction grid."""

from __future__ import annotations

import json
from typing import Any

import click

from georaster_quant.cli.options import (
    backend_option,
    bands_option,
    batch_size_option,
    config_option,
    image_option,
    labels_option,
    quiet_option,
    show_progress,
    stride_option,
)


def format_results(results: list[dict[str, Any]]) -> str:
    """A terminal table of evaluation results, then per-class F1."""
    head = (
        f"{'model':<28} {'quant':<17} {'accuracy':>8} {'macroF1':>8} {'agree':>7} "
        f"{'size':>9} {'ms/batch':>9} {'cells':>7}"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r['weights'][-28:]:<28} {r['quant_type']:<17} {r['accuracy']:>8.2%} "
            f"{r['macro_f1']:>8.3f} {r['agreement']:>7.2%} {r['size_bytes'] / 1024:>7.0f}KB "
            f"{r['latency_ms_per_batch']:>9.2f} {r['cells']:>7}"
        )
    names = results[0]["classes"]
    rows.append("")
    rows.append("per-class F1   " + " ".join(f"{n[:10]:>10}" for n in names))
    for i, r in enumerate(results, start=1):
        rows.append(f"  model {i:<7} " + " ".join(f"{f:>10.3f}" for f in r["per_class_f1"]))
    return "\n".join(rows)


@click.command("evaluate")
@click.option(
    "--weights",
    required=True,
    multiple=True,
    type=click.Path(),
    help="Bundle or exported file to score; repeat to compare (agreement is with the first).",
)
@image_option
@labels_option
@stride_option
@batch_size_option
@bands_option
@backend_option
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write figures (PNG) and an HTML page comparing the models into this folder.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the results as JSON to this file.",
)
@quiet_option
@config_option
def command(
    weights: tuple[str, ...],
    image: str,
    labels: str,
    stride: int | None,
    batch_size: int,
    bands: list[int] | None,
    backend: str,
    json_path: str | None,
    report_dir: str | None,
    quiet: bool,
) -> None:
    """Score each --weights on every cell of IMAGE's prediction grid against LABELS.

    A cell's truth is the majority label of its footprint (stride x stride pixels); cells
    that are mostly nodata in the image or unlabelled are skipped. Prints accuracy, macro F1,
    per-class F1, weight size, agreement with the first model and latency per batch.

    \b
    Examples:
      georaster-quant evaluate --weights runs/best --image data/test/scene.tif \\
          --labels data/test/labels.tif --stride 16
      georaster-quant evaluate --weights runs/best --weights q/best_static_int8 \\
          --image data/test/scene.tif --labels data/test/labels.tif --json eval.json \\
          --report runs/report
    """
    from georaster_quant.bundle import with_bundle_files
    from georaster_quant.evaluation import score_models
    from georaster_quant.io import atomic_path, check_output_path
    from georaster_quant.report import REPORT_MARKER

    inputs = with_bundle_files([image, labels, *weights])
    if json_path:
        check_output_path(json_path, overwrite=True, inputs=inputs)
    if report_dir:
        check_output_path(
            report_dir, overwrite=True, folder=True, marker=REPORT_MARKER, inputs=inputs
        )
    scores, _ = score_models(
        list(weights),
        image,
        labels,
        stride=stride,
        batch_size=batch_size,
        bands=bands,
        backend=backend,
        progress=show_progress(quiet),
    )
    results = [s.result for s in scores]
    click.echo(format_results(results))
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps({"results": results}, indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path}")
    if report_dir:
        from georaster_quant.report import write_report

        index = write_report(report_dir, scores, image, labels) / "index.html"
        click.echo(f"wrote {index}")
