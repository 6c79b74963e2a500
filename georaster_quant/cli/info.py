"""``georaster-quant info``: print a bundle's input contract."""

from __future__ import annotations

import json

import click

from georaster_quant.cli.options import config_option


def contract(path: str) -> dict[str, object]:
    """The bundle's contract as one JSON-ready mapping."""
    from georaster_quant.bundle import read_meta

    meta = read_meta(path)
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
        "normalization": {
            "mode": meta.normalization.mode,
            "center": meta.normalization.center,
            "scale": meta.normalization.scale,
            "clip": meta.normalization.clip,
        },
        "classes": [{"name": c.name, "color": list(c.color)} for c in meta.classes],
        "quantization": meta.quantization.model_dump(mode="json"),
        "metrics": meta.metrics,
        "size_bytes": meta.weights.size_bytes if meta.weights else None,
        "provenance": meta.provenance.model_dump(mode="json"),
    }


@click.command("info")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_option
def command(bundle: str, as_json: bool) -> None:
    """Show what BUNDLE expects as input and what it outputs.

    \b
    Examples:
      georaster-quant info runs/best
      georaster-quant info runs/best --json | jq .band_names
    """
    info = contract(bundle)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    norm = info["normalization"]
    assert isinstance(norm, dict)
    lines = [
        f"bundle        {bundle} ({info['model_name']}, {info['architecture']}, {info['quant_type']})",
        f"input         {info['bands']} bands {info['band_names']} ({info['dtype']}, nodata {info['nodata']})",
        f"tiles         {info['tile_size']} px, default stride {info['default_stride']} px",
        f"normalization {norm['mode']}, clip ±{norm['clip']}",
        f"fill values   {[round(v, 2) for v in info['fill_values']]}",  # type: ignore[union-attr]
        "classes       " + ", ".join(c["name"] for c in info["classes"]),  # type: ignore[union-attr,index]
        f"weights       {info['size_bytes']} bytes",
        f"metrics       {json.dumps(info['metrics'])}",
    ]
    click.echo("\n".join(lines))
