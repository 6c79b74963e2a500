"""``georaster-quant export``: a bundle into one self-describing TorchScript or ONNX file."""

from __future__ import annotations

from typing import Any

import click

from georaster_quant.cli.options import config_option


@click.command("export")
@click.option("--weights", required=True, type=click.Path(), help="Bundle folder to export.")
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["torchscript", "onnx"]),
    help="torchscript: runs with plain torch.jit.load; onnx: opset 17, runs on ONNX Runtime.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="File to write, ending in .onnx for onnx and not for torchscript (backends are picked "
    "by the suffix; default: model.torchscript.pt or model.onnx inside the bundle).",
)
@config_option
def command(weights: str, fmt: str, output: str | None) -> None:
    """Export --weights to one file that carries its own metadata and preprocessing.

    The file embeds bundle.json (band names and order, fill values, normalization, tile size,
    stride, classes and colours, quant type, checksums) and takes raw band values: the band
    normalization is its first operation. 'georaster-quant info FILE' shows the metadata;
    predict and evaluate take the file as --weights. An existing file is replaced.

    \b
    Examples:
      georaster-quant export --weights runs/best --format onnx
      georaster-quant export --weights quantized_models/best_per_channel_int8 \\
          --format torchscript --output deploy/model.pt
    """
    from georaster_quant.export import export_bundle

    report_export(export_bundle(weights, fmt, output))


def report_export(result: dict[str, Any]) -> None:
    """One line on an export just written (``export``, and ``train``/``quantize --onnx``)."""
    click.echo(
        f"wrote {result['path']} ({result['format']}, {result['quant_type']}, "
        f"{result['size_bytes']:,} bytes); decisions match the bundle on "
        f"{result['agreement_on_check']:.0%} of the check tiles"
    )
