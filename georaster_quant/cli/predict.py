"""``georaster-quant predict``: class maps of one or many rasters."""

from __future__ import annotations

import contextlib
import glob
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from georaster_quant.cli.options import (
    MAX_THREADS,
    backend_option,
    bands_option,
    batch_size_option,
    config_option,
    quiet_option,
    show_progress,
    stride_option,
)


def expand_inputs(values: tuple[str, ...]) -> list[str]:
    """``--image`` values: paths, URLs, glob patterns and ``@list.txt`` files (one per line).

    An existing file is taken as it is, even if its name has glob characters (``scene[1].tif``).
    """
    from georaster_quant.errors import RasterInputError

    out: list[str] = []
    for v in values:
        if v.startswith("@"):
            listing = Path(v[1:])
            if not listing.is_file():
                raise RasterInputError(f"{listing}: no such list file")
            lines = [ln.strip() for ln in listing.read_text().splitlines()]
            listed = [ln for ln in lines if ln and not ln.startswith("#")]
            if not listed:
                raise RasterInputError(f"{listing}: the list names no raster")
            out += listed
        elif "://" not in v and any(ch in v for ch in "*?[") and not Path(v).exists():
            matches = sorted(glob.glob(v))
            if not matches:
                raise RasterInputError(f"{v}: the pattern matches no file")
            out += matches
        else:
            out.append(v)
    return out


def output_paths(inputs: list[str], output: str, shown: Callable[[Path], str] = str) -> list[Path]:
    """One output per input: the file itself, or ``{stem}_classes.tif`` in a folder.

    ``shown`` names an output in messages (an ``s3://`` URI for a staged one).
    """
    from georaster_quant.errors import OutputPathError

    if not output.strip():
        raise OutputPathError("--output is empty; name the map (or a folder for several)")
    if len(inputs) == 1 and not output.endswith(("/", "\\")) and not Path(output).is_dir():
        return [Path(output)]
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{folder}: several inputs need an output folder, this is a file")
    names = [Path(i.split("?")[0]).stem + "_classes.tif" for i in inputs]
    seen: dict[str, str] = {}
    for name, src in zip(names, inputs, strict=True):
        if name in seen:
            raise OutputPathError(
                f"{shown(folder / name)}: both {seen[name]} and {src} would write it; "
                "rename one input"
            )
        seen[name] = src
    return [folder / n for n in names]


@click.command("predict")
@click.option(
    "--weights", required=True, type=click.Path(), help="Bundle folder or exported .pt/.onnx file."
)
@click.option(
    "--image",
    "images",
    required=True,
    multiple=True,
    help="Input raster (path, http(s):// or s3:// URL, glob, or @list.txt); repeat.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(),
    help="Map file for one input; a folder for several ({stem}_classes.tif each). May be "
    "s3://bucket/map.tif (or s3://bucket/dir/): built locally, uploaded when complete.",
)
@stride_option
@batch_size_option
@click.option(
    "--workers",
    type=click.IntRange(1, MAX_THREADS),
    default=None,
    help="Backend threads (default: the cores this process may use).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Run on the dask.distributed cluster at ADDRESS (e.g. tcp://10.0.0.5:8786). Its "
    "workers need this package and the rasters and weights at the same paths or URLs.",
)
@click.option(
    "--dask-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Start a local dask cluster of N worker processes for this run.",
)
@backend_option
@bands_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its journal.")
@click.option("--overwrite", is_flag=True, help="Replace existing maps.")
@click.option("--cog", is_flag=True, help="Write cloud-optimized GeoTIFFs with mode overviews.")
@click.option("--probabilities", is_flag=True, help="Add one band per class (percent).")
@quiet_option
@config_option
def command(
    weights: str,
    images: tuple[str, ...],
    output: str,
    stride: int | None,
    batch_size: int,
    workers: int | None,
    scheduler: str | None,
    dask_workers: int | None,
    backend: str,
    bands: list[int] | None,
    resume: bool,
    overwrite: bool,
    cog: bool,
    probabilities: bool,
    quiet: bool,
) -> None:
    """Classify each --image into a georeferenced class map.

    Each output cell covers stride x stride input pixels and takes the class of the tile
    centred on it. Bands (uint8, nodata 255): class (colour table, names), confidence in
    percent, and with --probabilities one band per class. Beside each map: a QGIS style
    (.qml) and a run summary (map.tif.json) with tiles, speed, peak memory and area per class.
    Maps are built beside the output and moved into place when complete; a killed run
    continues with --resume. An s3:// output is built in a local staging folder
    ($GEORASTER_QUANT_STAGING or the temp folder) and uploaded when complete, the map last
    (AWS_* variables as for GDAL). One bad input does not stop the others (exit 2 at the end).

    \b
    Examples:
      georaster-quant predict --weights runs/best --image scene.tif --output map.tif
      georaster-quant predict --weights runs/best/model.onnx --image 'tiles/*.tif' \\
          --output maps/ --cog
      georaster-quant predict --weights runs/best --image scene.tif \\
          --output s3://maps/2024/scene_classes.tif
      georaster-quant predict --weights runs/best --image naip.tif --bands 3,2,1,4 \\
          --output naip_classes.tif --stride 16 --probabilities
      georaster-quant predict --weights /shared/best --image /shared/big.tif \\
          --output /shared/big_classes.tif --scheduler tcp://scheduler:8786
    """
    from georaster_quant.bundle import with_bundle_files
    from georaster_quant.io import InputPaths, ensure_folder
    from georaster_quant.publish import S3Output, is_remote_output
    from georaster_quant.runner import PredictOptions, check_outputs

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if scheduler and dask_workers:
        raise click.UsageError("--scheduler and --dask-workers exclude each other")
    if workers and (scheduler or dask_workers):
        raise click.UsageError("on a dask cluster each worker uses its own threads; drop --workers")
    inputs = expand_inputs(images)
    remote = S3Output(output, several=len(inputs) > 1) if is_remote_output(output) else None
    local = remote.staging if remote else output
    outputs = output_paths(inputs, local, remote.uri_of if remote else str)
    if remote:
        remote.prepare(inputs, outputs, overwrite=overwrite or resume)
    if len(outputs) > 1 or outputs[0].parent != Path(local).parent:
        ensure_folder(local)
    everything = InputPaths(with_bundle_files([*inputs, weights]))  # none may be replaced
    for src, out in zip(inputs, outputs, strict=True):  # checked before any work starts
        check_outputs(src, out, overwrite=overwrite or resume, inputs=everything)
    opts = PredictOptions(
        stride=stride,
        batch_size=batch_size,
        bands=tuple(bands) if bands else None,
        probabilities=probabilities,
        cog=cog,
        resume=resume,
        overwrite=overwrite,
        progress=show_progress(quiet),
    )
    with contextlib.ExitStack() as stack:
        if scheduler or dask_workers:
            from georaster_quant.cluster import ClusterInference, dask_client

            client = stack.enter_context(dask_client(scheduler, dask_workers))
            model: Any = ClusterInference(client, weights, backend)
        else:
            from georaster_quant.backend import open_backend

            model = open_backend(weights, backend, threads=workers)
        try:
            _run_all(model, inputs, outputs, output, opts, remote)
        finally:
            if remote:
                remote.cleanup()  # a skipped map leaves its staging folder empty


def _run_all(
    model: Any,
    inputs: list[str],
    outputs: list[Path],
    output: str,
    opts: Any,
    remote: Any,
) -> None:
    """One map per input; a bad input is reported and skipped (exit 2 at the end)."""
    from georaster_quant.errors import GeoRasterQuantError
    from georaster_quant.runner import THIS_PROCESS, predict_raster, run_signature

    run = remote.publishing(predict_raster) if remote else predict_raster
    failed: list[tuple[str, str]] = []
    rows = []
    for src, out in zip(inputs, outputs, strict=True):
        try:
            if opts.resume and remote and remote.done(out):
                remote.check_same_run(out, run_signature(model, src, opts))
                click.echo(f"{remote.uri_of(out)}: already complete, skipped")
                continue
            s = run(model, src, out, opts)
        except GeoRasterQuantError as exc:
            if len(inputs) == 1:
                raise
            failed.append((src, str(exc)))
            click.echo(f"Error: {exc}", err=True)
            continue
        if s.get("skipped"):  # --resume of a map this same run had finished
            click.echo(f"{out}: already complete, skipped")
            continue
        rows.append(s)
        where = "" if s.get("ran_on", THIS_PROCESS) == THIS_PROCESS else f" on {s['ran_on']}"
        click.echo(
            f"{s['output']}: {s['grid'][1]}x{s['grid'][0]} cells, {s['tiles_inferred']} of "
            f"{s['tiles_total']} tiles inferred in {s['seconds']:.1f} s "
            f"({s['mpx_per_s']:.1f} Mpx/s, peak {s['peak_rss_mb']:.0f} MB, {s['backend']}{where})"
        )
    if len(inputs) > 1:
        click.echo(f"\n{len(rows)} of {len(inputs)} maps written to {output}")
        for src, msg in failed:  # messages name their file, which is often the input
            click.echo(f"  failed: {msg}" if src in msg else f"  failed: {src}: {msg}")
    if failed:
        sys.exit(2)
