"""``georaster-quant train``: train a GeoRasterCNN into an FP32 bundle."""

from __future__ import annotations

import click

from georaster_quant.arch import ARCHITECTURES, DEFAULT_ARCH
from georaster_quant.cli.options import (
    MAX_THREADS,
    config_option,
    image_option,
    labels_option,
    onnx_option,
    overwrite_option,
    quiet_option,
    show_progress,
)
from georaster_quant.normalize import MODES
from georaster_quant.training import TrainConfig

_D = TrainConfig()


@click.command("train")
@image_option
@labels_option
@click.option("--output", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option(
    "--arch",
    type=click.Choice(list(ARCHITECTURES)),
    default=DEFAULT_ARCH,
    show_default=True,
    help="Model architecture (see docs/models.md for the measured table).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=_D.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=_D.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_D.lr, show_default=True)
@click.option(
    "--weight-decay", type=click.FloatRange(min=0), default=_D.weight_decay, show_default=True
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=_D.patience,
    show_default=True,
    help="Epochs without a better validation accuracy before stopping.",
)
@click.option("--tile-size", type=click.IntRange(min=8), default=_D.tile_size, show_default=True)
@click.option(
    "--sample-stride",
    type=click.IntRange(min=1),
    default=None,
    show_default="half the tile size",
    help="Spacing of training tiles in pixels.",
)
@click.option(
    "--label-footprint",
    type=click.IntRange(min=1),
    default=None,
    show_default="half the tile size",
    help="A tile's label is the majority of this central square.",
)
@click.option(
    "--normalization", type=click.Choice(MODES), default=_D.normalization, show_default=True
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=_D.val_fraction,
    show_default=True,
)
@click.option(
    "--split-block",
    type=click.IntRange(min=8),
    default=_D.split_block,
    show_default=True,
    help="Size of the square blocks assigned to train or validation.",
)
@click.option("--max-tiles", type=click.IntRange(min=1), default=_D.max_tiles, show_default=True)
@click.option(
    "--num-classes",
    type=click.IntRange(min=2),
    default=None,
    help="Number of classes when the labels have no CLASSES tag.",
)
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_THREADS),
    default=None,
    help="Torch threads (default: the cores this process may use).",
)
@onnx_option
@overwrite_option
@quiet_option
@config_option
def command(
    image: str,
    labels: str,
    output: str,
    workers: int | None,
    onnx: bool,
    overwrite: bool,
    quiet: bool,
    **options: object,
) -> None:
    """Train a GeoRasterCNN on IMAGE with LABELS and write an FP32 bundle to OUTPUT.

    Tiles are sampled every --sample-stride pixels with the majority label of their centre,
    split into train and validation by spatial blocks (no overlap across the split), and the
    band normalization is fitted on the training tiles and stored inside the model.

    \b
    Examples:
      georaster-quant train --image data/train/scene.tif --labels data/train/labels.tif \\
          --output runs/best
      georaster-quant train --config configs/pipeline.yaml --epochs 5
    """
    from georaster_quant.cli.export import report_export
    from georaster_quant.training import train

    cfg = TrainConfig(threads=workers, **options)  # type: ignore[arg-type]
    result = train(
        image, labels, output, cfg, overwrite=overwrite, progress=show_progress(quiet), onnx=onnx
    )
    click.echo(
        f"wrote {result.bundle}: validation accuracy {result.val_accuracy:.2%} on "
        f"{result.val_tiles} tiles ({result.train_tiles} training tiles, "
        f"{result.epochs_run} epochs, {result.seconds:.0f} s)"
    )
    if result.onnx:
        report_export(result.onnx)
