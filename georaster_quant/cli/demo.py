"""``georaster-quant demo``: the main job on the built-in synthetic scene, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import click

from georaster_quant.cli.options import config_option, quiet_option, show_progress


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default="runs/demo",
    show_default=True,
    help="Folder for the scenes, the bundle and the evaluation.",
)
@click.option(
    "--size",
    type=click.IntRange(min=512, max=16384),  # the split needs several 256-pixel blocks
    default=2048,
    show_default=True,
    help="Edge of the training scene in pixels.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@config_option
def command(output: str, size: int, epochs: int, seed: int, quiet: bool) -> None:
    """Generate a training and a test scene, train the default model, evaluate it.

    The test scene has another seed, so the accuracy printed is on land cover the model has
    never seen. A spectral-only baseline (class Gaussians on per-band tile means) is printed
    for reference: the CNN should beat it clearly. Everything is rewritten on each run.

    \b
    Examples:
      georaster-quant demo --output runs/demo
    """
    from georaster_quant.cli.evaluate import format_results
    from georaster_quant.errors import OutputPathError
    from georaster_quant.evaluation import evaluate
    from georaster_quant.io import atomic_path
    from georaster_quant.synth import SceneSpec, generate_scene
    from georaster_quant.training import TrainConfig, train

    out = Path(output)
    progress = show_progress(quiet)
    try:  # the default runs/demo may not exist yet on a fresh clone
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot create the folder ({exc.strerror})") from None
    click.echo(
        f"1/4 synthetic scenes in {out}/ (train {size}x{size} seed {seed}, test seed {seed + 1000})"
    )
    tr_scene, tr_labels = generate_scene(
        out / "train", SceneSpec(size, size, 4, seed), overwrite=True, progress=progress
    )
    test = max(512, size * 3 // 4)
    te_scene, te_labels = generate_scene(
        out / "test",
        SceneSpec(test, test, 4, seed + 1000),
        overwrite=True,
        progress=progress,
    )
    click.echo("2/4 training the default GeoRasterCNN")
    result = train(
        tr_scene,
        tr_labels,
        out / "model",
        TrainConfig(epochs=epochs, seed=seed),
        overwrite=True,
        progress=progress,
    )
    click.echo(f"    validation accuracy {result.val_accuracy:.2%} ({result.seconds:.0f} s)")
    click.echo("3/4 spectral-only baseline on the same scenes")
    baseline = spectral_baseline(tr_scene, tr_labels, te_scene, te_labels)
    click.echo(f"    per-band tile means, Gaussian classes: {baseline:.2%} on the test scene")
    click.echo("4/4 evaluating on the unseen test scene at stride 16")
    results = evaluate([out / "model"], te_scene, te_labels, stride=16, progress=progress)
    click.echo(format_results(results))
    with atomic_path(out / "evaluation.json") as tmp:
        tmp.write_text(json.dumps({"results": results}, indent=2) + "\n", encoding="utf-8")
    click.echo(
        f"\nCNN {results[0]['accuracy']:.2%} vs spectral baseline {baseline:.2%}; "
        f"bundle: {out / 'model'}; results: {out / 'evaluation.json'}"
    )


def spectral_baseline(tr_scene: Path, tr_labels: Path, te_scene: Path, te_labels: Path) -> float:
    """Accuracy of the per-band-mean classifier trained on one scene, tested on another."""
    from georaster_quant.baseline import SpectralMeanClassifier, tile_means
    from georaster_quant.io import RasterReader
    from georaster_quant.sampling import sample_tiles

    def tiles(scene: Path, labels: Path):  # type: ignore[no-untyped-def]
        with RasterReader(scene) as img, RasterReader(labels) as lab:
            return sample_tiles(
                img, lab, tile_size=64, stride=32, label_footprint=32, num_classes=6, max_tiles=8000
            )

    train_tiles, test_tiles = tiles(tr_scene, tr_labels), tiles(te_scene, te_labels)
    clf = SpectralMeanClassifier().fit(
        tile_means(train_tiles.data, train_tiles.valid), train_tiles.labels
    )
    pred = clf.predict(tile_means(test_tiles.data, test_tiles.valid))
    return float((pred == test_tiles.labels).mean())
