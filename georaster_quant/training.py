"""Training a GeoRasterCNN on a labelled raster into an FP32 bundle.

Tiles are sampled on a grid with their majority label, split by spatial blocks so that no
training tile overlaps a validation tile, normalized by a band normalizer fitted on the
training tiles only (and baked into the model), augmented with the 8 flips/rotations, balanced
by class, and trained with AdamW and early stopping on validation accuracy.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from georaster_quant.arch import DEFAULT_ARCH
from georaster_quant.bundle import (
    META_FILE,
    Architecture,
    BundleMeta,
    ClassInfo,
    InputContract,
    Normalization,
    provenance,
    save_bundle,
)
from georaster_quant.errors import ConfigError, GeoRasterQuantWarning, TrainingDataError
from georaster_quant.io import RasterReader, check_output_path
from georaster_quant.normalize import BandNormalizer
from georaster_quant.sampling import TileSet, sample_tiles, spatial_split
from georaster_quant.threads import available_cores

#: Colours for classes of a label raster without a colour table.
_FALLBACK_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


@dataclass
class TrainConfig:
    """Training settings (the ``train`` command's options)."""

    arch: str = DEFAULT_ARCH
    tile_size: int = 64
    #: Spacing of training tiles; None: half the tile size.
    sample_stride: int | None = None
    #: Side of the central square whose majority label a tile gets; None: half the tile size.
    label_footprint: int | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    val_fraction: float = 0.2
    split_block: int = 256
    normalization: str = "zscore"
    max_tiles: int = 12000
    min_valid: float = 0.5
    num_classes: int | None = None
    seed: int = 0
    threads: int | None = None

    def resolved(self) -> TrainConfig:
        """A copy with the tile-size-relative defaults filled in, checked."""
        half = max(self.tile_size // 2, 1)
        cfg = replace(
            self,
            sample_stride=half if self.sample_stride is None else self.sample_stride,
            label_footprint=half if self.label_footprint is None else self.label_footprint,
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        """Reject inconsistent settings before any work starts (naming the CLI's options)."""
        tile = self.tile_size
        if tile < 8:
            raise ConfigError(f"tile size (--tile-size) must be at least 8, got {tile}")
        for name, value in (
            ("sample stride (--sample-stride)", self.sample_stride),
            ("label footprint (--label-footprint)", self.label_footprint),
        ):
            if value is not None and not 1 <= value <= tile:
                raise ConfigError(
                    f"{name} must be between 1 and the tile size ({tile}), got {value}"
                )
        if self.split_block < tile:
            raise ConfigError(
                f"split block (--split-block) must be at least the tile size ({tile}), "
                f"got {self.split_block}"
            )
        if not 0 < self.val_fraction < 1:
            raise ConfigError("validation fraction must be between 0 and 1")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch size >= 2")


@dataclass
class TrainResult:
    """What training produced."""

    bundle: Path
    val_accuracy: float
    train_tiles: int
    val_tiles: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    onnx: dict[str, Any] | None = None  # the export summary, with ``onnx=True``


def _dihedral(x: Any, k: int) -> Any:
    """Apply the k-th of the 8 flips/rotations to the last two axes of a tensor."""
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def _batch(tiles: TileSet, idx: np.ndarray, fill: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(tiles.filled(fill, idx))


def _channels_last(x: Any) -> Any:
    """A batch in channels-last memory.

    With the model in that layout too, oneDNN's convolutions train this network 17-30 %
    faster than in NCHW (docs/models.md).
    """
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def run_epoch(
    model: Any,
    opt: Any,
    tiles: TileSet,
    fill: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    *,
    sched: Any = None,
) -> float:
    """One class-balanced epoch with random flips/rotations; returns the mean loss.

    Each tile is drawn with probability inversely proportional to its class's frequency, so
    every class contributes equally; an epoch has as many samples as there are tiles.
    """
    import torch

    model.train()
    counts = np.bincount(tiles.labels).astype(np.float64)
    weights = (1.0 / counts[tiles.labels]) / np.count_nonzero(counts)
    steps = math.ceil(len(tiles) / batch_size)
    order = rng.choice(len(tiles), size=steps * batch_size, p=weights / weights.sum())
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    total = 0.0
    for s in range(steps):
        idx = np.sort(order[s * batch_size : (s + 1) * batch_size])
        x = _batch(tiles, idx, fill)
        ops = rng.integers(0, 8, size=len(idx))
        for k in np.unique(ops):
            sel = torch.from_numpy(np.flatnonzero(ops == k))
            x[sel] = _dihedral(x[sel], int(k))
        y = torch.from_numpy(tiles.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(_channels_last(x)), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.item()
    return total / steps


def _accuracy(model: Any, tiles: TileSet, fill: np.ndarray, batch: int = 256) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(tiles), batch):
            idx = np.arange(start, min(start + batch, len(tiles)))
            pred = model(_channels_last(_batch(tiles, idx, fill))).argmax(1).numpy()
            correct += int((pred == tiles.labels[idx]).sum())
    return correct / max(len(tiles), 1)


def train(
    image: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    onnx: bool = False,
) -> TrainResult:
    """Train a GeoRasterCNN on ``image`` with ``labels`` and write an FP32 bundle.

    With ``onnx`` the bundle holds its ``model.onnx`` export from the moment it appears.
    """
    import torch

    from georaster_quant.model import GeoRasterCNN, resolve_arch
    from georaster_quant.progress import progress_bar

    cfg = (config or TrainConfig()).resolved()
    spec = resolve_arch(cfg.arch)
    out = check_output_path(
        output, overwrite=overwrite, folder=True, marker=META_FILE, inputs=[image, labels]
    )
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.set_num_threads(cfg.threads or available_cores())

    with RasterReader(image) as img, RasterReader(labels) as lab:
        table = lab.class_table()
        if table is None:
            k = cfg.num_classes or 0
            if k < 2:
                raise TrainingDataError(
                    f"{lab.info.path}: no CLASSES tag; pass --num-classes to say how many classes"
                )
            table = ([f"class_{i}" for i in range(k)], (_FALLBACK_COLORS * (k // 10 + 1))[:k])
        elif cfg.num_classes is not None and cfg.num_classes != len(table[0]):
            raise TrainingDataError(
                f"{lab.info.path}: its CLASSES tag names {len(table[0])} classes, --num-classes "
                f"says {cfg.num_classes}; drop --num-classes or fix the tag"
            )
        names, colors = table
        info = img.info
        tiles = sample_tiles(
            img,
            lab,
            tile_size=cfg.tile_size,
            stride=cfg.sample_stride,
            label_footprint=cfg.label_footprint,
            num_classes=len(names),
            min_valid=cfg.min_valid,
            max_tiles=cfg.max_tiles,
            seed=cfg.seed,
        )
    try:
        train_idx, val_idx, val_blocks = spatial_split(
            tiles,
            height=info.height,
            width=info.width,
            tile_size=cfg.tile_size,
            block=cfg.split_block,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
    except TrainingDataError as exc:
        raise TrainingDataError(f"{labels}: {exc}") from None
    train_set, val_set = tiles.subset(train_idx), tiles.subset(val_idx)
    if len(train_set) < cfg.batch_size:
        raise TrainingDataError(
            f"{labels}: only {len(train_set)} training tiles; need at least a batch "
            f"({cfg.batch_size}); use a larger raster, a smaller --sample-stride or --batch-size"
        )
    present = np.unique(tiles.labels)
    if len(present) == 1:
        warnings.warn(
            f"{lab.info.path}: every sampled tile has the label {names[int(present[0])]!r}, "
            f"so the model can learn only that class of {len(names)}",
            GeoRasterQuantWarning,
            stacklevel=2,
        )

    normalizer = BandNormalizer(cfg.normalization, seed=cfg.seed)
    for start in range(0, len(train_set), 256):
        sl = slice(start, start + 256)
        normalizer.partial_fit(train_set.data[sl], train_set.valid[sl])
    norm = normalizer.to_dict()
    fill = np.asarray(norm["center"], dtype=np.float32)

    model = GeoRasterCNN(
        info.count,
        len(names),
        cfg.tile_size,
        spec,
        center=norm["center"],
        scale=norm["scale"],
        clip=norm["clip"],
    )
    model = model.to(memory_format=torch.channels_last)  # see _channels_last
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(train_set) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15
    )
    best_acc, best_state, stale = -1.0, None, 0
    history: list[dict[str, float]] = []
    bar = progress_bar(range(cfg.epochs), desc="train", unit="epoch", enabled=progress)
    for epoch in bar:
        loss = run_epoch(model, opt, train_set, fill, cfg.batch_size, rng, sched=sched)
        acc = _accuracy(model, val_set, fill)
        history.append({"epoch": epoch + 1, "loss": loss, "val_accuracy": acc})
        bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{acc:.3f}")
        if acc > best_acc:
            best_acc, best_state, stale = acc, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    bar.close()
    model.load_state_dict(best_state)  # type: ignore[arg-type]
    model = model.to(memory_format=torch.contiguous_format).eval()  # saved weights: plain layout

    meta = BundleMeta(
        schema_version=1,
        kind="georaster_quant.bundle",
        model_name=out.name,
        architecture=Architecture(
            name=cfg.arch,
            spec=spec.to_dict(),
            in_channels=info.count,
            num_classes=len(names),
            tile_size=cfg.tile_size,
        ),
        input=InputContract(
            bands=list(info.bands),
            band_names=list(info.band_names),
            dtype=info.dtype,
            nodata=info.nodata,
            fill_values=norm["center"],
            tile_size=cfg.tile_size,
            default_stride=cfg.tile_size,
            pixel_size=info.res,
            label_footprint=cfg.label_footprint,
        ),
        normalization=Normalization(**norm),
        classes=[ClassInfo(name=n, color=c) for n, c in zip(names, colors, strict=True)],
        metrics={
            "fp32": {"val_accuracy": best_acc},
            "val_tiles": len(val_set),
            "train_tiles": len(train_set),
        },
        training={
            "config": {k: v for k, v in vars(cfg).items()},
            "val_blocks": val_blocks,
            "image_path": os.path.abspath(image),
            "labels_path": os.path.abspath(labels),
            "epochs_run": len(history),
            "history": history,
        },
        provenance=provenance(os.fspath(image)),
    )
    exported: dict[str, Any] = {}

    def with_onnx(staging: Path) -> None:
        from georaster_quant.export import export_into

        exported.update(export_into(staging, out))

    save_bundle(out, model, meta, overwrite=overwrite, verify=with_onnx if onnx else None)
    return TrainResult(
        bundle=out,
        val_accuracy=best_acc,
        train_tiles=len(train_set),
        val_tiles=len(val_set),
        epochs_run=len(history),
        seconds=time.perf_counter() - t0,
        history=history,
        onnx=exported or None,
    )
