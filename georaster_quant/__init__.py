"""georaster_quant: quantized scene classification of large multispectral rasters on CPUs.

Importing the package is cheap: torch and onnxruntime load only when a model is used. The
main entry points are re-exported lazily::

    import georaster_quant as gq
    gq.generate_scene("data/train", gq.SceneSpec(2048, 2048, seed=0))
    result = gq.train("data/train/scene.tif", "data/train/labels.tif", "runs/best")
    bundle = gq.Bundle("runs/best")
    cells = gq.predict_grid(gq.open_backend("runs/best"), "data/test/scene.tif", stride=16)
    scores = gq.evaluate(["runs/best"], "data/test/scene.tif", "data/test/labels.tif")
    gq.predict_raster(gq.open_backend("runs/best"), "big.tif", "big_classes.tif")

    import rioxarray, georaster_quant.accessor  # registers DataArray.gq
    ds = rioxarray.open_rasterio("big.tif", chunks=2048).gq.predict("runs/best")  # lazy
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Bundle": "georaster_quant.bundle",
    "read_meta": "georaster_quant.bundle",
    "BandNormalizer": "georaster_quant.normalize",
    "ClusterInference": "georaster_quant.cluster",
    "GeoRasterCNN": "georaster_quant.model",
    "PredictOptions": "georaster_quant.runner",
    "QuantizeOptions": "georaster_quant.quantized_bundle",
    "RasterReader": "georaster_quant.io",
    "SceneSpec": "georaster_quant.synth",
    "TileGrid": "georaster_quant.tiling",
    "TrainConfig": "georaster_quant.training",
    "Window": "georaster_quant.tiling",
    "dask_client": "georaster_quant.cluster",
    "disagreement_map": "georaster_quant.predict",
    "evaluate": "georaster_quant.evaluation",
    "export_bundle": "georaster_quant.export",
    "generate_scene": "georaster_quant.synth",
    "open_backend": "georaster_quant.backend",
    "predict_dataarray": "georaster_quant.lazy",
    "predict_grid": "georaster_quant.predict",
    "predict_raster": "georaster_quant.runner",
    "quantize_bundle": "georaster_quant.quantized_bundle",
    "train": "georaster_quant.training",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'georaster_quant' has no attribute {name!r}")
