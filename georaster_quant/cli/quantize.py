"""``georaster-quant quantize``: an FP32 bundle into an FP16 or INT8 bundle."""

from __future__ import annotations

import click

from georaster_quant.bundle import ENGINES, OBSERVERS, QUANT_TYPES
from georaster_quant.cli.options import bands_option, config_option, onnx_option, overwrite_option

#: What an FP32 bundle can be quantized to.
TARGET_TYPES = tuple(t for t in QUANT_TYPES if t != "fp32")


@click.command("quantize")
@click.option("--weights", required=True, type=click.Path(), help="FP32 bundle to quantize.")
@click.option("--quant-type", required=True, type=click.Choice(TARGET_TYPES))
@click.option(
    "--data",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Raster(s) to take calibration tiles from; repeat for several.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    default=None,
    help="Labels of the first --data raster: accuracy is measured on held-out blocks "
    "(default: the validation blocks recorded at training, if those rasters exist).",
)
@click.option("--num-calib-batches", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Tiles per calibration batch (and per timed batch).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="fbgemm",
    show_default=True,
    help="Engine to calibrate for (its qconfig). When an fbgemm or x86 static or QAT bundle "
    "loads on an x86 CPU with AVX2 or AVX-512, torch runs it on oneDNN's kernels (1.4-2.9x "
    "faster there); otherwise on this engine's. GEORASTER_QUANT_INT8_ENGINE=ENGINE forces the "
    "kernels.",
)
@click.option(
    "--observer",
    type=click.Choice(OBSERVERS),
    default="histogram",
    show_default=True,
    help="Activation observer for static INT8 (see docs/quantization.md).",
)
@click.option(
    "--calibration",
    type=click.Choice(["diverse", "random"]),
    default="diverse",
    show_default=True,
    help="How calibration tiles are chosen.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    help="Accuracy budget in percentage points; over it, sensitive layers stay FP32.",
)
@click.option(
    "--qat-epochs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Fine-tuning epochs for qat_int8 (observers and BN freeze after the first).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default="quantized_models",
    show_default=True,
    help="Folder for the new bundle {model_name}_{quant_type}.",
)
@bands_option
@click.option("--seed", type=int, default=0, show_default=True)
@onnx_option
@overwrite_option
@config_option
def command(
    weights: str,
    quant_type: str,
    data: tuple[str, ...],
    labels: str | None,
    num_calib_batches: int,
    batch_size: int,
    engine: str,
    observer: str,
    calibration: str,
    max_accuracy_drop: float | None,
    qat_epochs: int,
    output: str,
    bands: list[int] | None,
    seed: int,
    onnx: bool,
    overwrite: bool,
) -> None:
    """Quantize the FP32 bundle --weights and print a Quantization Summary.

    Static types calibrate on --num-calib-batches x --batch-size tiles chosen for diversity
    (brightness, vegetation, clouds, shadows, nodata) from the --data rasters. The band
    normalization always stays FP32 inside the model.

    \b
    Examples:
      georaster-quant quantize --weights runs/best --quant-type per_channel_int8 \\
          --data data/train/scene.tif
      georaster-quant quantize --weights runs/best --quant-type static_int8 \\
          --data data/train/scene.tif --max-accuracy-drop 0.5 --output q
      georaster-quant quantize --weights runs/best --quant-type qat_int8 \\
          --data data/train/scene.tif --labels data/train/labels.tif
      georaster-quant quantize --weights runs/best --quant-type fp16
    """
    from georaster_quant.cli.export import report_export
    from georaster_quant.export import NO_ONNX_TYPES
    from georaster_quant.quantized_bundle import QuantizeOptions, format_summary, quantize_bundle

    opts = QuantizeOptions(
        quant_type=quant_type,
        data=list(data),
        labels=labels,
        num_calib_batches=num_calib_batches,
        batch_size=batch_size,
        engine=engine,
        observer=observer,
        calibration=calibration,
        max_accuracy_drop=max_accuracy_drop,
        qat_epochs=qat_epochs,
        bands=bands,
        seed=seed,
    )
    summary = quantize_bundle(weights, opts, output, overwrite=overwrite, onnx=onnx)
    click.echo(format_summary(summary))
    if onnx and quant_type in NO_ONNX_TYPES:
        click.echo(f"no model.onnx: {quant_type} runs on torch (export --format torchscript)")
    elif summary["onnx"]:
        report_export(summary["onnx"])
