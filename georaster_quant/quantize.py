"""Post-training quantization of a GeoRasterCNN: the one module that uses ``torch.ao``.

Follows PyTorch's eager workflow: eval, fuse conv-BN-ReLU, set a qconfig, prepare, calibrate
on representative tiles, convert. The band normalization stays in FP32 ahead of the QuantStub.
``torch.ao.quantization`` is deprecated in torch 2.13 and warns; those warnings are kept away
from users here.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from georaster_quant.errors import ConfigError
from georaster_quant.model import GeoRasterCNN

ENGINES = ("fbgemm", "x86", "qnnpack")
OBSERVERS = ("minmax", "moving_average", "histogram")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's deprecation warnings for eager quantization (and quantized inference)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        yield


def _qconfig(per_channel: bool, observer: str, engine: str):  # type: ignore[no-untyped-def]
    from torch.ao.quantization import observer as obs
    from torch.ao.quantization.qconfig import QConfig

    reduce_range = engine in ("fbgemm", "x86")
    activation = {
        "minmax": obs.MinMaxObserver,
        "moving_average": obs.MovingAverageMinMaxObserver,
        "histogram": obs.HistogramObserver,
    }[observer].with_args(reduce_range=reduce_range)
    if per_channel:
        weight = obs.PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        )
    else:
        weight = obs.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfig(activation=activation, weight=weight)


def quantize_static(
    model: GeoRasterCNN,
    batches: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    engine: str = "fbgemm",
    observer: str = "histogram",
) -> torch.nn.Module:
    """A new INT8 module calibrated on ``batches`` of raw tiles; ``model`` is untouched."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if observer not in OBSERVERS:
        raise ConfigError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    with quiet():
        import torch.ao.quantization as tq

        torch.backends.quantized.engine = engine
        m = copy.deepcopy(model).eval()
        m.quant = tq.QuantStub()
        m.dequant = tq.DeQuantStub()
        tq.fuse_modules(m, m.fusable_groups(), inplace=True)
        m.qconfig = _qconfig(per_channel, observer, engine)
        m.normalize.qconfig = None
        tq.prepare(m, inplace=True)
        seen = 0
        with torch.inference_mode():
            for batch in batches:
                m(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
                seen += len(batch)
        if seen == 0:
            raise ConfigError("no calibration tiles were given")
        tq.convert(m, inplace=True)
    return m
