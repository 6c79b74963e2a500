"""``georaster-quant info``: print a bundle's input contract."""

from __future__ import annotations

import json
from typing import Any

import click

from georaster_quant.cli.options import config_option


def contract(path: str) -> dict[str, Any]:
    """The contract of a bundle folder or an exported file as one JSON-ready mapping."""
    from pathlib import Path

    from georaster_quant.bundle import read_meta

    if Path(path).is_file():
        from georaster_quant.export import read_exported_meta

        meta = read_exported_meta(path)
        size: int | None = Path(path).stat().st_size  # the exported file itself
    else:
        meta = read_meta(path)
        weights = Path(path) / meta.weights_info.file
        size = weights.stat().st_size if weights.is_file() else None
    return {
        "path": path,
        "model_name": meta.model_name,
        "architecture": meta.architecture.name,
        "quant_type": meta.quant_type,
        "tile_size": meta.input.tile_size,
        "default_stride": meta.input.default_stride,
        "bands": len(meta.input.bands),
        "band_names": meta.input.band_names,
        "dtype": meta.input.dtype,
        "nodata": meta.input.nodata,
        "fill_values": meta.input.fill_values,
        "normalization": meta.normalization.model_dump(mode="json", exclude={"stats"}),
        "classes": [{"name": c.name, "color": list(c.color)} for c in meta.classes],
        "quantization": meta.quantization.model_dump(mode="json"),
        "metrics": meta.metrics,
        "size_bytes": size,
        "provenance": meta.provenance.model_dump(mode="json"),
    }


def format_contract(c: dict[str, Any]) -> str:
    """The contract as aligned lines for the terminal."""
    norm = c["normalization"]
    return "\n".join(
        [
            f"bundle         {c['path']} ({c['architecture']}, {c['quant_type']})",
            f"input bands    {c['bands']}: {', '.join(str(n) for n in c['band_names'])}"
            f" ({c['dtype']}, nodata {c['nodata']})",
            f"tiles          {c['tile_size']} px, default stride {c['default_stride']} px",
            f"normalization  {norm['mode']}, then clip to ±{norm['clip']:g}",
            f"fill values    {', '.join(f'{v:.1f}' for v in c['fill_values'])}",
            f"classes        {', '.join(k['name'] for k in c['classes'])}",
            f"weights        {_size(c['size_bytes'])}",
            f"metrics        {json.dumps(c['metrics'])}",
            f"trained on     {c['provenance']['training_raster']}"
            f" (sha256 {c['provenance']['training_raster_sha256'][:12]}...)",
        ]
    )


def _size(size: int | None) -> str:
    return "MISSING (the weight file is not there)" if size is None else f"{size:,} bytes"


@click.command("info")
@click.argument("bundle", metavar="BUNDLE_OR_EXPORTED_FILE", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
def command(bundle: str, as_json: bool) -> None:
    """Show what BUNDLE expects as input and what it outputs.

    \b
    Examples:
      georaster-quant info runs/best
      georaster-quant info runs/best --json | jq .band_names
      georaster-quant info runs/best/model.onnx
    """
    c = contract(bundle)
    click.echo(json.dumps(c, indent=2) if as_json else format_contract(c))
