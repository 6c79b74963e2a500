"""Exporting a bundle to one self-describing file: TorchScript or ONNX.

The one module that uses ``torch.jit`` and ``torch.onnx``. Each exported file carries the
bundle's whole ``bundle.json`` (TorchScript ``_extra_files``, ONNX ``metadata_props``) plus an
export record, so the file alone is enough to run inference on raw band values: the model's
first operation is still the FP32 band normalization.

INT8 bundles go to ONNX through the legacy exporter (``dynamo=False``) applied to the
quantized torch module itself, which yields a QDQ graph with the bundle's own weights and
activation ranges; see docs/export.md for why this beat re-quantizing the FP32 graph with ONNX
Runtime here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from georaster_quant import __version__
from georaster_quant.bundle import Bundle, BundleMeta, now_iso, sha256_file
from georaster_quant.errors import BundleError, ConfigError, OutputPathError
from georaster_quant.io import atomic_path, check_output_path

FORMATS = ("torchscript", "onnx")
#: Quant types with no ONNX form (dynamic quantization exports to TorchScript only).
NO_ONNX_TYPES = ("dynamic_int8",)
#: Default file names inside the bundle folder.
FILE_NAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
#: Metadata keys: the whole bundle.json, and how the file was exported.
META_KEY = "georaster_quant"
EXPORT_KEY = "georaster_quant.export"
TORCHSCRIPT_META_FILE = "georaster_quant.json"
TORCHSCRIPT_EXPORT_FILE = "georaster_quant.export.json"
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def metadata(meta: BundleMeta, fmt: str, bundle_path: Path) -> dict[str, str]:
    """The key/value strings every exported file carries."""
    record = {
        "format": fmt,
        "opset": OPSET if fmt == "onnx" else None,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "output_kind": "logits",
        "source_bundle": os.fspath(bundle_path),
        "source_weights_sha256": meta.weights_info.sha256,
        "package_version": __version__,
        "exported": now_iso(),
    }
    flat = {
        META_KEY: json.dumps(meta.model_dump(mode="json")),
        EXPORT_KEY: json.dumps(record),
        # Readable without parsing the whole bundle.json:
        "quant_type": meta.quant_type,
        "band_names": json.dumps(meta.input.band_names),
        "fill_values": json.dumps(meta.input.fill_values),
        "tile_size": str(meta.input.tile_size),
        "default_stride": str(meta.input.default_stride),
        "normalization": json.dumps(meta.normalization.model_dump(mode="json", exclude={"stats"})),
        "classes": json.dumps([c.model_dump(mode="json") for c in meta.classes]),
        "training_raster_sha256": meta.provenance.training_raster_sha256,
    }
    return flat


def parse_metadata(path: str | os.PathLike[str], values: dict[str, str]) -> BundleMeta:
    """The bundle metadata embedded in an exported file, validated."""
    from pydantic import ValidationError

    if META_KEY not in values:
        raise BundleError(
            f"{path}: no georaster_quant metadata (missing key {META_KEY!r}); export the model "
            "with 'georaster-quant export' so the file carries its band order, fill values, "
            "normalization and classes"
        )
    try:
        return BundleMeta.model_validate(json.loads(values[META_KEY]))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(f"{path}: embedded metadata is invalid ({first})") from None


def read_exported_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Metadata of an exported file, read without torch or a runtime session.

    The file's model content is checked against the checksum its export recorded.
    """
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: no such file")
    values = exported_metadata(p)
    meta = parse_metadata(p, values)
    check_content(p, values)
    return meta


def check_content(path: Path, values: dict[str, str]) -> None:
    """Refuse a file whose model content no longer matches its recorded checksum.

    Bundles check their weights' SHA-256; an exported file records one of its own content
    (the ONNX graph, or the TorchScript archive without its metadata files), since bit rot or
    a bad copy would otherwise run and give wrong maps. Files exported before this check
    record none and are taken as they are.
    """
    try:
        expected = json.loads(values.get(EXPORT_KEY, "{}")).get("content_sha256")
    except (json.JSONDecodeError, AttributeError):
        expected = None
    if expected is not None and content_sha256(path) != expected:
        raise BundleError(
            f"{path}: the model in the file does not match its recorded checksum; the file "
            "was changed or damaged (export it again)"
        )


def content_sha256(path: Path) -> str:
    """SHA-256 of an exported file's model: what :func:`metadata` does not write."""
    import zipfile

    digest = hashlib.sha256()
    try:
        if path.suffix == ".onnx":
            for number, value in _proto_fields(Path(path).read_bytes()):
                if number == _ONNX_GRAPH:
                    digest.update(_delimited(value))
        else:
            with zipfile.ZipFile(path) as zf:
                # Entries sit under a folder named after the file as saved; the metadata files
                # and torch's random id of each save are not the model.
                names = {n.split("/", 1)[-1]: n for n in zf.namelist()}
                for name in sorted(names):
                    if not name.startswith(("extra/", ".data/serialization_id")):
                        digest.update(name.encode() + b"\0" + zf.read(names[name]))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: the model in the file is damaged ({exc})") from None
    return digest.hexdigest()


def _with_content_sha256(values: dict[str, str], digest: str) -> dict[str, str]:
    """``values`` with the content checksum added to the export record."""
    record = json.loads(values[EXPORT_KEY]) | {"content_sha256": digest}
    return values | {EXPORT_KEY: json.dumps(record)}


def exported_metadata(path: Path) -> dict[str, str]:
    """The raw metadata strings of an ``.onnx`` or TorchScript file (see :func:`metadata`)."""
    return onnx_metadata(path) if path.suffix == ".onnx" else _torchscript_metadata(path)


#: ``ModelProto`` field numbers (onnx.proto): the graph and the metadata properties.
_ONNX_GRAPH, _ONNX_METADATA_PROPS = 7, 14


def onnx_metadata(path: Path) -> dict[str, str]:
    """Metadata properties of an ONNX file, read from its protobuf wire format.

    Neither ``onnx`` nor a runtime session is needed: importing ``onnx`` alone takes about
    0.55 s here (its ``ml_dtypes`` dependency), which every ``predict`` would pay. Only the
    top level of the ``ModelProto`` is walked; the graph is skipped, not parsed.
    """
    try:
        props, has_graph = {}, False
        for number, value in _proto_fields(Path(path).read_bytes()):
            has_graph |= number == _ONNX_GRAPH
            if number == _ONNX_METADATA_PROPS:  # StringStringEntryProto: key 1, value 2
                entry = {n: _text(v) for n, v in _proto_fields(_delimited(value)) if n in (1, 2)}
                props[entry.get(1, "")] = entry.get(2, "")
        if not has_graph:
            raise ValueError("no graph")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not a readable ONNX model ({exc})") from None
    return props


def _delimited(value: int | memoryview) -> memoryview:
    """The bytes of a length-delimited field; a number where one is expected is malformed."""
    if isinstance(value, int):
        raise ValueError("a number where the ONNX schema has a string or message")
    return value


def _text(value: int | memoryview) -> str:
    return bytes(_delimited(value)).decode()


def _proto_fields(data: bytes | memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """``(field number, value)`` of one protobuf message.

    Varints and fixed-width numbers come back as ``int``, length-delimited values (strings,
    bytes, messages) as views into ``data``.
    """
    view, pos, end = memoryview(data), 0, len(data)

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated or malformed protobuf")
            byte = view[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("malformed protobuf (field number 0)")
        if wire == 0:
            yield number, varint()
            continue
        if wire == 2:
            size = varint()
        elif wire in (1, 5):  # fixed 64 or 32 bits
            size = 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos + size > end:
            raise ValueError("truncated protobuf")
        value = view[pos : pos + size]
        pos += size
        yield number, value if wire == 2 else int.from_bytes(value, "little")


def _torchscript_metadata(path: Path) -> dict[str, str]:
    """TorchScript files are zip archives; extra files sit in ``<archive>/extra/``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.split("/extra/", 1)[1]: n for n in zf.namelist() if "/extra/" in n}
            values = {}
            if TORCHSCRIPT_META_FILE in names:
                values[META_KEY] = zf.read(names[TORCHSCRIPT_META_FILE]).decode("utf-8")
            if TORCHSCRIPT_EXPORT_FILE in names:
                values[EXPORT_KEY] = zf.read(names[TORCHSCRIPT_EXPORT_FILE]).decode("utf-8")
            return values
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError):
        raise BundleError(f"{path}: not a TorchScript file (expected a .pt zip archive)") from None


def default_output(bundle: str | os.PathLike[str], fmt: str) -> Path:
    """Where an export goes without ``--output``: inside the bundle folder."""
    return Path(bundle) / FILE_NAMES[fmt]


def export_bundle(
    weights: str | os.PathLike[str],
    fmt: str,
    output: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = True,
    recorded_as: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Export the bundle ``weights`` to ``fmt`` and check the file against the bundle.

    ``recorded_as`` is the bundle path the export record names (default ``weights``).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    bundle = Bundle(weights)
    if fmt == "onnx" and bundle.meta.quant_type in NO_ONNX_TYPES:
        raise ConfigError(
            f"{weights}: dynamic_int8 bundles export to TorchScript only; for ONNX quantize "
            "with static_int8 or per_channel_int8"
        )
    out = Path(output or default_output(weights, fmt))
    if out.resolve().parent == Path(weights).resolve() and out.name not in FILE_NAMES.values():
        raise OutputPathError(
            f"{out}: is inside the bundle {weights}, where an export may only be "
            f"{' or '.join(FILE_NAMES.values())}; choose another output"
        )
    out = check_output_path(out, overwrite=overwrite)
    if (out.suffix == ".onnx") != (fmt == "onnx"):  # the backend is chosen by the suffix
        want = "a name ending in .onnx" if fmt == "onnx" else "a name not ending in .onnx (.pt)"
        raise ConfigError(
            f"{out}: a {fmt} export needs {want}; .onnx files run on ONNX Runtime, others on "
            "TorchScript"
        )
    values = metadata(bundle.meta, fmt, Path(recorded_as or weights))
    sample = _sample(bundle)
    with atomic_path(out, suffix=out.suffix) as tmp:
        if fmt == "torchscript":
            _write_torchscript(bundle, tmp, values, sample)
        else:
            _write_onnx(bundle, tmp, values, sample)
        agreement = _check(bundle, tmp, fmt, sample)
    return {
        "path": os.fspath(out),
        "format": fmt,
        "quant_type": bundle.meta.quant_type,
        "size_bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "agreement_on_check": agreement,
    }


def export_into(staging: Path, final: Path) -> dict[str, Any]:
    """Write ``model.onnx`` into a bundle still being assembled at ``staging``.

    ``train`` and ``quantize`` call it before the bundle is moved into place, so a bundle
    that should carry its ONNX export never appears without it. The record and the returned
    summary name ``final``, where the bundle goes.
    """
    result = export_bundle(staging, "onnx", recorded_as=final)
    return result | {"path": os.fspath(final / FILE_NAMES["onnx"])}


def _sample(bundle: Bundle, n: int = 16) -> np.ndarray:
    """Raw-looking tiles around the fill values, for tracing and the export check."""
    meta = bundle.meta
    rng = np.random.default_rng(0)
    center = np.asarray(meta.normalization.center, np.float32)[None, :, None, None]
    scale = np.asarray(meta.normalization.scale, np.float32)[None, :, None, None]
    t = meta.input.tile_size
    noise = rng.standard_normal((n, len(center[0]), t, t)).astype(np.float32)
    return center + scale * noise


def traced(model: Any, example: np.ndarray) -> Any:
    """``model`` in the form inference runs, traced to TorchScript on ``example`` (a batch).

    A static INT8 model's input quantization is fused (:func:`~georaster_quant.quantize.
    inference_form`); the trace records a reshape there, so it reads NCHW and channels-last
    batches alike, of any batch size (tiles of the model's tile size).
    """
    import torch

    from georaster_quant.quantize import inference_form, quiet

    with quiet(), torch.inference_mode():
        return torch.jit.trace(inference_form(model), torch.from_numpy(example), check_trace=False)


def frozen(module: Any) -> Any:
    """A TorchScript module frozen for this process: its weights become constants.

    Freezing a traced per-channel INT8 model took its batch of 32 from 0.66 to 0.55 ms here
    (docs/export.md). Frozen INT8 weights stay packed for the kernels they were loaded on, so
    static INT8 files are saved unfrozen and frozen where they load; FP32 files are saved
    frozen; FP16 and dynamic INT8 ones are not frozen.
    """
    import torch

    from georaster_quant.quantize import quiet

    with quiet(), torch.inference_mode():
        return torch.jit.freeze(module.eval())


def _write_torchscript(bundle: Bundle, path: Path, values: dict[str, str], x: np.ndarray) -> None:
    import torch

    from georaster_quant.quantize import quiet

    traced_model = traced(bundle.model, x[:2])
    if bundle.meta.quant_type == "fp32":
        traced_model = frozen(traced_model)

    def save(values: dict[str, str]) -> None:
        with quiet(), torch.inference_mode():
            torch.jit.save(
                traced_model,
                os.fspath(path),
                _extra_files={
                    TORCHSCRIPT_META_FILE: values[META_KEY],
                    TORCHSCRIPT_EXPORT_FILE: values[EXPORT_KEY],
                },
            )

    save(values)  # once to learn the content's checksum, then with it recorded
    save(_with_content_sha256(values, content_sha256(path)))


def torch_onnx_graph(bundle: Bundle, x: np.ndarray) -> Any:
    """The bundle's model as ``torch.onnx``'s legacy exporter writes it (an ``onnx`` model)."""
    from io import BytesIO

    import onnx
    import torch

    from georaster_quant.quantize import quiet

    buffer = BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(
            bundle.model,
            (torch.from_numpy(x[:2]),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def _write_onnx(bundle: Bundle, path: Path, values: dict[str, str], x: np.ndarray) -> None:
    import onnx

    model = torch_onnx_graph(bundle, x)
    clip_after_quantize(model.graph)
    digest = hashlib.sha256(model.graph.SerializeToString()).hexdigest()
    for key, value in _with_content_sha256(values, digest).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "georaster_quant"
    model.producer_version = __version__
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


def clip_after_quantize(graph: Any) -> int:
    """Move each ``Clip`` that only feeds a per-tensor ``QuantizeLinear`` after it; how many.

    ``quantize(clip(x, lo, hi)) == clip(quantize(x), quantize(lo), quantize(hi))`` for every
    non-NaN ``x``, because quantizing keeps order; the bounds are ``QuantizeLinear`` nodes on
    constants, which ONNX Runtime folds with its own kernel. The clip then passes over the
    8-bit values instead of float32 ones: the static INT8 model's clip of the normalized bands
    (``BandNormalize``) becomes a quarter of the memory traffic.
    """
    from onnx import helper

    nodes = list(graph.node)
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    for node in nodes:
        if node.op_type == "Constant" and node.attribute:
            value = node.attribute[0]
            sizes[node.output[0]] = int(np.prod(value.t.dims)) if value.name == "value" else 1
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    outputs = {o.name for o in graph.output}
    clip_of = {}  # index of a per-tensor QuantizeLinear -> index of the Clip feeding it alone
    for i, clip in enumerate(nodes):
        after = consumers.get(clip.output[0], []) if clip.op_type == "Clip" else []
        quantize = nodes[after[0]] if len(after) == 1 else None
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            if quantize.input[0] == clip.output[0] and clip.output[0] not in outputs:
                if sizes.get(quantize.input[1]) == 1 and not clip.attribute:  # opset >= 11
                    clip_of[after[0]] = i
    clips = set(clip_of.values())
    rewritten = []
    for i, node in enumerate(nodes):
        if i in clips:
            continue
        if i not in clip_of:
            rewritten.append(node)
            continue
        clip = nodes[clip_of[i]]
        scale_zp = list(node.input[1:])
        quantized = node.output[0] + "_unclipped"
        q = [helper.make_node("QuantizeLinear", [clip.input[0], *scale_zp], [quantized], node.name)]
        bounds = []
        for side, name in zip(("min", "max"), (list(clip.input) + ["", ""])[1:3], strict=True):
            bounds.append(f"{node.output[0]}_clip_{side}" if name else "")  # "": omitted
            if name:
                q.append(helper.make_node("QuantizeLinear", [name, *scale_zp], [bounds[-1]]))
        for new in q:  # the quantizer's own attributes, on each of its copies
            new.attribute.extend(node.attribute)
        q.append(helper.make_node("Clip", [quantized, *bounds], list(node.output), clip.name))
        rewritten += q
    del graph.node[:]
    graph.node.extend(rewritten)
    return len(clip_of)


def _check(bundle: Bundle, path: Path, fmt: str, x: np.ndarray) -> float:
    """Run the written file on ``x``; its decisions must match the bundle's."""
    from georaster_quant.backend import open_backend
    from georaster_quant.quantize import run

    exported = open_backend(path, "onnxruntime" if fmt == "onnx" else "torchscript")
    ref = run(bundle.model, x).argmax(1).numpy()
    got = exported(x).argmax(axis=1)
    agreement = float((ref == got).mean())
    if agreement < 0.9:
        raise BundleError(f"{path}: the exported model decides differently from the bundle")
    return agreement
