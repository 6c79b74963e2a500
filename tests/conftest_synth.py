"""Shared session fixtures for the synth / bundle / CLI / training tests.

A pytest plugin, not a conftest: test modules load it with
``pytest_plugins = ["conftest_synth"]`` (never import it directly, so pytest can rewrite its
asserts). Plain helpers are in ``synth_helpers.py``. Results are kept in a module cache, so
the scene is generated and the small bundle trained once per test session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from synth_helpers import SMALL, SMALL_TRAIN, _cached, make_scene

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 512x512 4-band scene (seed 0) and its labels, generated once per session."""
    return _cached(
        "small_scene",
        lambda: make_scene(tmp_path_factory.mktemp("small_scene") / "scene", **SMALL),
    )


@pytest.fixture(scope="session")
def trained_bundle(small_scene: tuple[Path, Path], tmp_path_factory) -> Path:
    """One small FP32 bundle trained on :func:`small_scene`; read-only for the tests."""

    def make() -> Path:
        from georaster_quant.training import TrainConfig, train

        out = tmp_path_factory.mktemp("bundle") / "small"
        result = train(*small_scene, out, TrainConfig(**SMALL_TRAIN), progress=False)
        return result.bundle

    return _cached("trained_bundle", make)


@pytest.fixture(scope="session")
def three_band_scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 128x128 scene with 3 bands (blue, green, red) for band-count mismatches."""
    return _cached(
        "three_band_scene",
        lambda: make_scene(tmp_path_factory.mktemp("three") / "scene", 128, 128, 3, 0),
    )


@pytest.fixture
def bundle_copy(trained_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the shared bundle that a test may tamper with."""
    dst = tmp_path / trained_bundle.name
    shutil.copytree(trained_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def int8_bundle(trained_bundle: Path, small_scene, tmp_path_factory) -> Path:
    """A per-channel INT8 bundle of :func:`trained_bundle`, calibrated on the small scene."""

    def make() -> Path:
        from georaster_quant.quantized_bundle import QuantizeOptions, quantize_bundle

        opts = QuantizeOptions(
            "per_channel_int8", data=[str(small_scene[0])], batch_size=16, num_calib_batches=2
        )
        out = tmp_path_factory.mktemp("int8")
        return Path(quantize_bundle(trained_bundle, opts, out)["bundle"])

    return _cached("int8_bundle", make)
