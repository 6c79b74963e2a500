"""Backends: a float32 batch of raw band values in, class probabilities out.

Every backend takes raw values in the model's band order with nodata already replaced by the
fill values; normalization happens inside the model (DESIGN's one rule). A bundle folder runs
on PyTorch (static INT8 models traced and frozen); an exported ``.pt`` file on TorchScript; an
``.onnx`` file on ONNX Runtime, which never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from georaster_quant.bundle import STATIC_TYPES, Bundle, BundleMeta
from georaster_quant.errors import BundleError, ConfigError
from georaster_quant.threads import available_cores

BACKENDS = ("auto", "torch", "torchscript", "onnxruntime")
#: Tiles in the batch a torch backend runs a static INT8 model on as it loads: ``predict``'s
#: default ``--batch-size``. Its kernels then ran a batch of 32 in 0.59-0.62 ms, against
#: 0.73-0.76 ms when the first batch had been a single tile (docs/export.md).
WARM_UP_TILES = 32


class Backend(Protocol):
    """What the runner and the evaluator need from a model."""

    name: str
    meta: BundleMeta
    size_bytes: int
    #: Whether batches band-interleaved in memory (channels-last) run fastest; the runner
    #: then reads them so. Any layout gives the same result.
    channels_last: bool

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` for a raw batch ``(N, C, T, T)``."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _fp32_convolutions(meta: BundleMeta) -> bool:
    """Whether the model's convolutions compute in FP32.

    True for FP32, dynamic INT8 (only its head is INT8) and FP16 weights computed in FP32.
    """
    q = meta.quantization
    return q.type in ("fp32", "dynamic_int8") or (
        q.type == "fp16" and q.details.get("compute_dtype") == "fp32"
    )


def _channels_last(meta: BundleMeta) -> bool:
    """Whether a torch model runs fastest on channels-last batches.

    Models with FP32 convolutions do (oneDNN ran this network about 28 % faster at batch 32
    in FP32, docs/export.md), and so do static INT8 ones, whose fused input quantization
    (:func:`~georaster_quant.quantize.inference_form`) then needs no transposing copy.
    """
    return _fp32_convolutions(meta) or meta.quant_type in STATIC_TYPES


def _torch_batch(torch: Any, batch: np.ndarray, fp32_convolutions: bool) -> Any:
    """A raw batch, in the layout it has, as a tensor; channels-last for FP32 convolutions.

    Static INT8 models read either layout; their first step copies the batch anyway.
    """
    arr = np.asarray(batch, np.float32)
    if min(arr.strides, default=0) < 0:  # torch cannot view reversed memory
        arr = np.ascontiguousarray(arr)
    x = torch.from_numpy(arr)
    return x.contiguous(memory_format=torch.channels_last) if fp32_convolutions else x


def _run_on(torch: Any, engine: str | None) -> None:
    """Make ``engine`` the process's quantized engine, if it is not already (None: no INT8).

    A frozen INT8 model still consults it as it runs: with fbgemm's selected, a frozen model
    packed for oneDNN took 1.56 ms per batch of 32 instead of 0.62. It is process-wide, so a
    backend sets it before each batch, for the case of models of two engines in one process
    (one after the other: threads running both at once may still run one on the other's).
    """
    if engine is not None and torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine


def batch_layout(backend: Backend) -> bool:
    """``backend.channels_last``, False for backends that do not say."""
    return bool(getattr(backend, "channels_last", False))


class _TorchRun:
    """What both torch backends do with their model.

    Its batch layout, its own quantized engine before each batch, and probabilities taken in
    torch.
    """

    def _setup(
        self, torch: Any, meta: BundleMeta, engine: str | None, threads: int | None, quiet: Any
    ) -> None:
        self._torch, self.meta, self._engine, self._quiet = torch, meta, engine, quiet
        self.channels_last = _channels_last(meta)
        self._fp32_convolutions = _fp32_convolutions(meta)
        torch.set_num_threads(threads or available_cores())
        _run_on(torch, engine)  # INT8 weights pack, trace and freeze for its kernels

    def _run(self, model: Any) -> None:
        """Run ``model`` from now on; a static INT8 one (TorchScript by now) frozen, warmed up.

        The warm-up is :data:`WARM_UP_TILES` zero tiles, channels-last as ``predict`` hands
        them.
        """
        self.model = model
        if self.meta.quant_type in STATIC_TYPES:
            from georaster_quant.export import frozen

            self.model = frozen(model)
            t = self.meta.input.tile_size
            zeros = np.zeros((WARM_UP_TILES, t, t, len(self.meta.input.bands)), np.float32)
            self(np.moveaxis(zeros, -1, 1))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities of the model."""
        torch = self._torch
        _run_on(torch, self._engine)
        with self._quiet(), torch.inference_mode():
            logits = self.model(_torch_batch(torch, batch, self._fp32_convolutions))
            # In torch: NumPy's softmax of the 32 x 6 logits cost 60 µs right after an INT8
            # batch (7 µs on its own) while torch's OpenMP threads still spun; torch's 25 µs.
            return torch.softmax(logits.float(), 1).numpy()


class TorchBackend(_TorchRun):
    """PyTorch on a loaded bundle (FP32, FP16 or INT8): eager; static INT8 traced and frozen."""

    name = "torch"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        import torch

        quiet: Any = contextlib.nullcontext
        if bundle.meta.quant_type != "fp32":  # quantized kernels warn that they are deprecated
            from georaster_quant.quantize import quiet

        self._setup(torch, bundle.meta, bundle.engine, threads, quiet)
        self.bundle = bundle
        self.size_bytes = bundle.size_bytes
        model = bundle.model
        if self.meta.quant_type in STATIC_TYPES:
            # In the form inference runs, traced (and frozen by _run): the per-channel INT8
            # model then ran a batch of 32 in 0.55 ms against 0.87 eager (docs/export.md);
            # both steps take some 50 ms.
            from georaster_quant.export import traced

            t = self.meta.input.tile_size
            model = traced(model, np.zeros((2, len(self.meta.input.bands), t, t), np.float32))
        self._run(model)


@contextlib.contextmanager
def _native_stderr_muted() -> Any:
    """Mute what C++ code prints straight to file descriptor 2 meanwhile.

    ``torch.jit.load`` of a quantized file prints torch's deprecation notice for quantized
    tensors from C++, past Python's warning filters. Only for short, single-threaded steps.
    """
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (closed stderr): nothing to mute
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _probe(backend: Any, path: str | os.PathLike[str], warm_up: Any = None) -> None:
    """Run ``warm_up`` and one zero tile, to refuse a file that does not fit its metadata.

    An exported file must take the tiles and give the class scores its metadata describes; a
    file edited or assembled by hand may not.
    """
    meta = backend.meta
    bands, t, k = len(meta.input.bands), meta.input.tile_size, len(meta.classes)
    try:
        if warm_up is not None:
            warm_up()
        scores = backend(np.zeros((1, bands, t, t), np.float32))
    except Exception as exc:  # noqa: BLE001 - runtimes raise their own types, pages long
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise BundleError(
            f"{path}: does not run on the {bands}-band {t}x{t} tiles its metadata describes "
            f"({first})"
        ) from None
    if scores.shape != (1, k):
        raise BundleError(
            f"{path}: gives {scores.shape[-1]} class scores, its metadata lists {k} classes"
        )


class TorchScriptBackend(_TorchRun):
    """A TorchScript file written by ``georaster-quant export``."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        import torch

        from georaster_quant.export import read_exported_meta
        from georaster_quant.quantize import kernel_engine, quiet

        meta = read_exported_meta(path)
        engine = kernel_engine(meta.quant_type, meta.quantization.engine)
        # torch.jit and quantized kernels warn that they are deprecated
        self._setup(torch, meta, engine, threads, quiet)
        self.size_bytes = Path(path).stat().st_size
        try:
            with quiet(), _native_stderr_muted():
                model = torch.jit.load(os.fspath(path), map_location="cpu").eval()
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"{path}: not a loadable TorchScript model ({first})") from None
        # Static INT8 files are saved unfrozen, for any engine's kernels: frozen as they load.
        _probe(self, path, warm_up=lambda: self._run(model))


class OnnxRuntimeBackend:
    """An ONNX file written by ``georaster-quant export``, on ONNX Runtime (no torch)."""

    name = "onnxruntime"
    channels_last = False  # the exported graph's NCHW input

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        import onnxruntime as ort

        from georaster_quant.export import INPUT_NAME, check_content, parse_metadata

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the reader and writer threads need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).splitlines()[0]
            raise BundleError(f"{path}: not a loadable ONNX model ({first})") from None
        values = self.session.get_modelmeta().custom_metadata_map
        self.meta = parse_metadata(path, values)
        check_content(Path(path), values)
        self.size_bytes = Path(path).stat().st_size
        self._input = INPUT_NAME
        _probe(self, path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities of the ONNX model."""
        (logits,) = self.session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})
        return softmax(logits)


def _exported_beside(bundle: Path, kind: str = "onnxruntime") -> Path | None:
    """The bundle's own export for backend ``kind`` if made from the weights file it holds.

    The export's source checksum must match both ``bundle.json``'s record and the weights
    file itself (a bundle whose weights were replaced is loaded by torch, which refuses it),
    and its content its own recorded checksum (a damaged copy is passed over).
    """
    import json

    from georaster_quant.bundle import read_meta, sha256_file
    from georaster_quant.export import EXPORT_KEY, FILE_NAMES, check_content, exported_metadata

    exported = bundle / FILE_NAMES["onnx" if kind == "onnxruntime" else kind]
    if not exported.is_file():
        return None
    try:
        values = exported_metadata(exported)
        check_content(exported, values)  # a damaged copy is passed over like a stale one
        record = json.loads(values.get(EXPORT_KEY, "{}"))
        weights = read_meta(bundle).weights_info
        source = record.get("source_weights_sha256")
        current = source == weights.sha256 == sha256_file(bundle / weights.file)
    except (BundleError, OSError, ValueError):
        return None
    return exported if current else None


def resolve_backend(weights: str | os.PathLike[str], backend: str = "auto") -> tuple[str, Path]:
    """Which backend runs ``weights`` and on which file, without loading it.

    ``auto`` follows docs/export.md's measurements: ONNX Runtime is the fastest FP32 path and
    starts 3.5x faster than torch, which runs INT8 batches faster (on oneDNN kernels) but not
    ``predict`` runs, so a bundle folder holding an up-to-date ``model.onnx`` runs on it;
    otherwise a bundle runs on torch, a ``.pt`` file on TorchScript and an ``.onnx``
    file on ONNX Runtime. Asked for ``onnxruntime`` or ``torchscript``, a bundle folder runs
    its own up-to-date export for it. A backend that cannot run ``weights`` is a
    :class:`ConfigError`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(weights)
    if path.is_dir() or not path.exists():
        kind = "torch"
        if backend != "torch" and path.is_dir():
            beside = "onnxruntime" if backend == "auto" else backend
            exported = _exported_beside(path, beside)
            if exported is not None:
                return beside, exported
    elif path.suffix == ".onnx":
        kind = "onnxruntime"
    else:
        kind = "torchscript"
    if backend not in ("auto", kind):
        hint = "export it first with 'georaster-quant export'" if kind == "torch" else ""
        raise ConfigError(
            f"{weights}: a {'bundle folder' if kind == 'torch' else path.suffix + ' file'} runs "
            f"on the {kind} backend, not {backend}" + (f"; {hint}" if hint else "")
        )
    return kind, path


def open_backend(
    weights: str | os.PathLike[str], backend: str = "auto", threads: int | None = None
) -> Backend:
    """Load a bundle folder or an exported file behind the backend :func:`resolve_backend` picks."""
    kind, path = resolve_backend(weights, backend)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, threads)
    if kind == "torchscript":
        return TorchScriptBackend(path, threads)
    return TorchBackend(Bundle(path), threads=threads)


def as_backend(model: Backend | str | os.PathLike[str]) -> Backend:
    """``model`` itself, or the backend ``auto`` picks for a bundle folder or exported file."""
    return open_backend(model) if isinstance(model, str | os.PathLike) else model


def read_model_meta(weights: str | os.PathLike[str]) -> BundleMeta:
    """The metadata of a bundle folder or an exported file, without loading the model.

    What a dask client needs to plan a run whose workers load the model themselves.
    """
    path = Path(weights)
    if path.is_dir() or not path.exists():
        from georaster_quant.bundle import read_meta

        return read_meta(path)
    from georaster_quant.export import read_exported_meta

    return read_exported_meta(path)


_CACHE: dict[tuple[str, str, int | None], tuple[str | None, Backend]] = {}
_CACHE_LOCK = threading.Lock()
#: How many models this process has loaded through :func:`cached_backend`.
LOADS = 0


def cached_backend(
    weights: str | os.PathLike[str],
    backend: str = "auto",
    threads: int | None = None,
    version: str | None = None,
) -> Backend:
    """:func:`open_backend`, loaded once per process and shared by its tasks.

    Dask tasks call this, so each worker process loads the model once, not with every task.
    ``version`` (the weights' checksum the client planned with) reloads a model whose files
    were replaced at the same path since it was loaded.
    """
    global LOADS
    key = (os.path.abspath(weights), backend, threads)
    with _CACHE_LOCK:
        if key not in _CACHE or _CACHE[key][0] != version:
            _CACHE[key] = (version, open_backend(weights, backend, threads))
            LOADS += 1
        return _CACHE[key][1]
