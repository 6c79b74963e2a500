"""``georaster-quant synth``: write a synthetic scene and its labels."""

from __future__ import annotations

import click

from georaster_quant.cli.options import (
    MAX_THREADS,
    config_option,
    overwrite_option,
    quiet_option,
    show_progress,
)


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--width", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--height", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option(
    "--bands",
    type=click.IntRange(3, 13),
    default=4,
    show_default=True,
    help="How many Sentinel-2-like bands: blue, green, red and nir come first, then swir1, "
    "swir2, the red edges ...; the file lists them in wavelength order (e.g. 7: blue, green, "
    "red, rededge1, nir, swir1, swir2).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Scene seed (deterministic).")
@click.option("--cog", is_flag=True, help="Write cloud-optimized GeoTIFFs with overviews.")
@click.option(
    "--chunk",
    type=click.IntRange(min=16),
    default=512,
    show_default=True,
    help="Window size rendered at a time (memory ~ chunk^2 x bands x 100 bytes per worker).",
)
@click.option("--workers", type=click.IntRange(1, MAX_THREADS), default=2, show_default=True)
@overwrite_option
@quiet_option
@config_option
def command(
    out_dir: str,
    width: int,
    height: int,
    bands: int,
    seed: int,
    cog: bool,
    chunk: int,
    workers: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write OUT_DIR/scene.tif and OUT_DIR/labels.tif: the built-in synthetic data.

    The scene is uint16 reflectance (scale 10000) on a UTM grid of 10 m pixels with six land
    cover classes (water, forest, grassland, cropland, built_up, bare_soil), class texture,
    haze, clouds, shadows, noise and sometimes a nodata edge. It is written window by window,
    so any size fits in memory, and the pixels depend only on the seed.

    \b
    Examples:
      georaster-quant synth data/train --seed 0
      georaster-quant synth data/big --width 16384 --height 16384 --cog
      georaster-quant synth data/s2 --bands 10 --seed 3
    """
    from georaster_quant.synth import SceneSpec, generate_scene

    spec = SceneSpec(width=width, height=height, bands=bands, seed=seed)
    scene, labels = generate_scene(
        out_dir,
        spec,
        cog=cog,
        chunk=chunk,
        workers=workers,
        overwrite=overwrite,
        progress=show_progress(quiet),
    )
    click.echo(f"wrote {scene} ({width}x{height}, {bands} bands) and {labels}")
