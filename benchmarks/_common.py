"""Helpers shared by the benchmarks: alternating timings and ONNX Runtime sessions."""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import torch

from georaster_quant.io import to_physical
from georaster_quant.quantize import quiet


def in_layout(batch, channels_last):
    """``batch`` as ``predict`` hands it to a backend: band-interleaved if the backend asks."""
    return to_physical(batch, channels_last=True) if channels_last else batch


def timings(runners, batch, repeats, block=5):
    """Median ms per call of each runner, alternating A, B, C ... in blocks.

    Each runner gets ``batch`` in the memory layout ``predict`` reads for it (its
    ``channels_last``; converted before timing). Runners alternate in rounds; within a round
    each runs one untimed call (its threads wake up and the previous runtime's threads go
    idle) and then ``block`` timed calls, so torch's OpenMP threads and ONNX Runtime's pool do
    not time each other's idle spinning.
    """
    batches = {k: in_layout(batch, getattr(f, "channels_last", False)) for k, f in runners.items()}
    times = {k: [] for k in runners}
    for _ in range(max(1, repeats // block)):
        for k, fn in runners.items():
            fn(batches[k])
            for _ in range(block):
                t0 = time.perf_counter()
                fn(batches[k])
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1000 for k, v in times.items()}


def torch_runner(module, channels_last=False):
    """Call a (possibly quantized) module on a numpy batch (band-interleaved if asked)."""

    def fn(batch):
        with quiet(), torch.inference_mode():
            return module(torch.from_numpy(batch))

    fn.channels_last = channels_last
    return fn


def ort_runner(model, threads):
    """ONNX Runtime on an export of ``model``, FP32 or quantized (legacy exporter, opset 17)."""
    import onnxruntime as ort

    buf = io.BytesIO()
    x = torch.zeros(1, model.in_channels, model.tile_size, model.tile_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads would steal the cores from the runner timed next.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    return lambda batch: sess.run(None, {"input": batch})
