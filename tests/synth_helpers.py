"""Shared helpers (plain functions) for the synth / bundle / CLI / training tests.

Test modules import these with ``from synth_helpers import ...``; the fixtures built on them
live in ``conftest_synth.py``, which test modules load with ``pytest_plugins``.

Everything here is real: scenes come from :func:`georaster_quant.synth.generate_scene`,
variants are written with rasterio, the bundle is trained by :func:`georaster_quant.training.train`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

#: Small training scene: big enough for a 128-pixel block split, fast to train on.
SMALL = dict(width=512, height=512, bands=4, seed=0)
#: Settings of the one small bundle shared by the tests (about 2 s of training).
SMALL_TRAIN = dict(epochs=4, sample_stride=16, split_block=128, max_tiles=2000)

_CACHE: dict[str, Any] = {}


def _cached(key: str, make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def make_scene(out_dir: Path, width: int, height: int, bands: int = 4, seed: int = 0, **kw: Any):
    """Generate a synthetic scene; returns ``(scene_path, labels_path)``."""
    from georaster_quant.synth import SceneSpec, generate_scene

    return generate_scene(out_dir, SceneSpec(width, height, bands, seed), progress=False, **kw)


def read(path: str | os.PathLike[str]) -> np.ndarray:
    """All bands of a raster as an array."""
    with rasterio.open(path) as ds:
        return ds.read()


def write_labels_like(
    like: str | os.PathLike[str],
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    transform: Any = None,
) -> Path:
    """Write a label raster with the tags, colour table and profile of ``like``."""
    with rasterio.open(like) as src:
        profile = src.profile.copy()
        tags = src.tags()
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = None
    array = np.asarray(array, dtype=np.uint8)
    profile.update(height=array.shape[-2], width=array.shape[-1])
    if transform is not None:
        profile["transform"] = transform
    if array.shape[-1] < 256 or array.shape[-2] < 256:
        profile.update(blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.reshape(1, *array.shape[-2:]))
        dst.update_tags(**tags)
        if cmap:
            dst.write_colormap(1, cmap)
    return Path(path)


def cli_executable() -> list[str]:
    """The installed ``georaster-quant`` console script (this venv's first)."""
    beside = Path(sys.executable).parent / "georaster-quant"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("georaster-quant")
    if found:
        return [found]
    pytest.skip("georaster-quant console script is not installed")
    raise AssertionError  # unreachable


def run_cli_subprocess(*args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 120):
    """Run the real console script; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [*cli_executable(), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run the CLI in-process through ``main`` (real exit codes); (code, stdout, stderr)."""
    from georaster_quant.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else int(code)), out, err


def assert_one_line_error(code: int, out: str, err: str, *needles: object) -> str:
    """Exit 2, exactly one stderr line 'Error: ...' containing ``needles``, no traceback."""
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error:"), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    assert "Traceback" not in out + err
    return lines[0]
