"""The band normalizer (scikit-learn contract) and its agreement with the model's first layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from georaster_quant import errors
from georaster_quant.model import BandNormalize
from georaster_quant.normalize import DEFAULT_CLIP, MODES, BandNormalizer

BANDS = 4


def make_windows(
    n: int = 6, size: int = 24, seed: int = 0, nodata_share: float = 0.2
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reflectance-like windows ``(C, H, W)`` float32 with random invalid pixels.

    Invalid pixels hold absurd values so that counting them would show in every statistic.
    """
    rng = np.random.default_rng(seed)
    centers = np.array([500.0, 1200.0, 3000.0, 8000.0])[:, None, None]
    spreads = np.array([50.0, 300.0, 900.0, 2000.0])[:, None, None]
    windows = []
    for _ in range(n):
        data = (centers + spreads * rng.standard_normal((BANDS, size, size))).astype(np.float32)
        valid = rng.random((size, size)) >= nodata_share
        data[:, ~valid] = 65_535.0
        windows.append((data, valid))
    return windows


def valid_pixels(windows: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """All valid pixels as float64 ``(C, N)``, in stream order."""
    return np.concatenate([d[:, v].astype(np.float64) for d, v in windows], axis=1)


# --- fitting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_streaming_fit_equals_statistics_of_all_valid_pixels(mode: str) -> None:
    windows = make_windows()
    pixels = valid_pixels(windows)
    norm = BandNormalizer(mode=mode, sample_size=pixels.shape[1])
    streamed = norm.fit(windows)
    assert streamed is norm
    assert norm.n_samples_ == pixels.shape[1]
    np.testing.assert_allclose(norm.mean_, pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(norm.std_, pixels.std(axis=1), rtol=1e-9)
    np.testing.assert_array_equal(norm.min_, pixels.min(axis=1))
    np.testing.assert_array_equal(norm.max_, pixels.max(axis=1))
    # the reservoir holds every pixel, so the percentiles are exact
    expected = np.percentile(pixels, norm.percentiles, axis=1).T
    np.testing.assert_allclose(norm.percentiles_, expected, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_streaming_equals_one_partial_fit_of_everything(mode: str) -> None:
    windows = make_windows(seed=3)
    data = np.stack([d for d, _ in windows])  # a batch (N, C, H, W)
    valid = np.stack([v for _, v in windows])  # (N, H, W)
    size = int(valid.sum())
    streamed = BandNormalizer(mode=mode, sample_size=size)
    for d, v in windows:
        streamed.partial_fit(d, v)
    at_once = BandNormalizer(mode=mode, sample_size=size).partial_fit(data, valid)
    assert streamed.n_samples_ == at_once.n_samples_ == size
    np.testing.assert_allclose(streamed.mean_, at_once.mean_, rtol=1e-9)
    np.testing.assert_allclose(streamed.std_, at_once.std_, rtol=1e-9)
    np.testing.assert_array_equal(streamed.min_, at_once.min_)
    np.testing.assert_array_equal(streamed.max_, at_once.max_)
    np.testing.assert_array_equal(streamed.percentiles_, at_once.percentiles_)
    np.testing.assert_allclose(streamed.center_, at_once.center_, rtol=1e-9)
    np.testing.assert_allclose(streamed.scale_, at_once.scale_, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=2**16),
)
def test_any_chunking_gives_the_same_moments(chunks: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    total = sum(chunks)
    pixels = rng.normal(100.0, 25.0, size=(3, max(total, 1)))
    norm = BandNormalizer(sample_size=10_000)
    start = 0
    for n in chunks:  # pixels as (C, 1, n) windows; empty chunks are allowed
        norm.partial_fit(pixels[:, None, start : start + n])
        start += n
    if total == 0:
        with pytest.raises(errors.NotFittedError):
            norm.transform(pixels[:, None, :1])
        return
    seen = pixels[:, :total]
    np.testing.assert_allclose(norm.mean_, seen.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(norm.std_, seen.std(axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(norm.min_, seen.min(axis=1))
    np.testing.assert_array_equal(norm.max_, seen.max(axis=1))
    np.testing.assert_allclose(
        norm.percentiles_, np.percentile(seen, norm.percentiles, axis=1).T, rtol=1e-12
    )


def test_sampled_percentiles_are_close() -> None:
    """With a reservoir smaller than the data the percentiles are within 1 % of the range."""
    windows = make_windows(n=40, size=32, seed=7)  # ~33k valid pixels per band
    pixels = valid_pixels(windows)
    norm = BandNormalizer(mode="percentile", sample_size=8_000, seed=1).fit(windows)
    assert norm._reservoir.shape[1] == 8_000 < pixels.shape[1]
    expected = np.percentile(pixels, norm.percentiles, axis=1).T
    span = (pixels.max(axis=1) - pixels.min(axis=1))[:, None]
    assert np.all(np.abs(norm.percentiles_ - expected) <= 0.01 * span)


def test_nodata_and_nan_pixels_are_excluded() -> None:
    rng = np.random.default_rng(11)
    data = rng.uniform(10, 20, size=(BANDS, 30, 30))
    valid = np.ones((30, 30), dtype=bool)
    valid[:10] = False
    data[:, :10] = -9999.0  # nodata
    data[2, 20, 20] = np.nan  # a NaN in one band drops the whole pixel
    norm = BandNormalizer(mode="minmax", sample_size=10_000).fit([(data, valid)])
    keep = valid.copy()
    keep[20, 20] = False
    pixels = data[:, keep]
    assert norm.n_samples_ == keep.sum()
    np.testing.assert_array_equal(norm.min_, pixels.min(axis=1))
    np.testing.assert_array_equal(norm.max_, pixels.max(axis=1))
    np.testing.assert_allclose(norm.mean_, pixels.mean(axis=1), rtol=1e-12)
    assert np.all(norm.min_ >= 10)


def test_all_invalid_windows_do_not_fit() -> None:
    data = np.ones((2, 5, 5))
    norm = BandNormalizer().partial_fit(data, np.zeros((5, 5), dtype=bool))
    with pytest.raises(errors.NotFittedError):
        norm.transform(data)


def test_fit_resets_previous_state() -> None:
    first, second = make_windows(seed=1), make_windows(seed=2)
    norm = BandNormalizer(sample_size=100_000).fit(first)
    norm.fit(second)
    fresh = BandNormalizer(sample_size=100_000).fit(second)
    np.testing.assert_array_equal(norm.mean_, fresh.mean_)
    np.testing.assert_array_equal(norm.m2_, fresh.m2_)
    assert norm.n_samples_ == fresh.n_samples_


@pytest.mark.parametrize("mode", MODES)
def test_zero_variance_band_gets_scale_one(mode: str) -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(0.3, 0.05, size=(3, 20, 20))
    data[1] = 1234.5  # constant band
    data[2] = 0.0  # constant zero band
    norm = BandNormalizer(mode=mode).fit([(data, np.ones((20, 20), dtype=bool))])
    assert norm.scale_[1] == 1.0 and norm.scale_[2] == 1.0
    assert norm.center_[1] == pytest.approx(1234.5) and norm.center_[2] == 0.0
    assert norm.scale_[0] > 0 and norm.scale_[0] != 1.0
    out = norm.transform(data)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1:], 0.0, atol=1e-6)


# --- transform --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_transform_is_the_affine_map_clipped(mode: str) -> None:
    windows = make_windows(seed=9)
    norm = BandNormalizer(mode=mode).fit(windows)
    assert norm.clip == DEFAULT_CLIP[mode]
    data = windows[0][0].astype(np.float64)
    data[:, 0, 0] = 1e9  # far above every range: clipped high
    data[:, 0, 1] = -1e9  # clipped low
    out = norm.transform(data)
    assert out.dtype == np.float32 and out.shape == data.shape
    c, s = norm.center_[:, None, None], norm.scale_[:, None, None]
    expected = np.clip((data - c) / s, -norm.clip, norm.clip)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out.max() <= norm.clip and out.min() >= -norm.clip
    np.testing.assert_array_equal(out[:, 0, 0], norm.clip)
    np.testing.assert_array_equal(out[:, 0, 1], -norm.clip)
    # batches (N, C, H, W) normalize per band too
    batch = np.stack([data, data])
    np.testing.assert_array_equal(norm.transform(batch), np.stack([out, out]))


@pytest.mark.parametrize("mode", MODES)
def test_fill_values_normalize_to_zero(mode: str) -> None:
    norm = BandNormalizer(mode=mode).fit(make_windows(seed=4))
    np.testing.assert_array_equal(norm.fill_values_, norm.center_)
    filled = np.broadcast_to(norm.fill_values_[:, None, None], (BANDS, 3, 3))
    np.testing.assert_allclose(norm.transform(filled), 0.0, atol=1e-6)


def test_minmax_maps_the_range_to_plus_minus_one() -> None:
    windows = make_windows(seed=2)
    norm = BandNormalizer(mode="minmax").fit(windows)
    lo = norm.transform(norm.min_[:, None, None])
    hi = norm.transform(norm.max_[:, None, None])
    np.testing.assert_allclose(lo.ravel(), -1.0, atol=1e-6)
    np.testing.assert_allclose(hi.ravel(), 1.0, atol=1e-6)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_transform_before_fit_is_not_fitted_error(mode: str) -> None:
    norm = BandNormalizer(mode=mode)
    with pytest.raises(errors.NotFittedError) as info:
        norm.transform(np.zeros((BANDS, 2, 2)))
    assert isinstance(info.value, ValueError)
    assert "fit" in str(info.value)
    for attr in ("center_", "scale_", "std_", "fill_values_"):
        with pytest.raises(errors.NotFittedError):
            getattr(norm, attr)
    with pytest.raises(errors.NotFittedError):
        norm.to_dict()


def test_fit_on_no_windows_is_not_fitted_error() -> None:
    with pytest.raises(errors.NotFittedError):
        BandNormalizer().fit([])


def test_invalid_mode_is_a_config_error() -> None:
    norm = BandNormalizer(mode="robust")
    assert norm.mode == "robust"  # __init__ only stores parameters
    with pytest.raises(errors.ConfigError, match="robust") as info:
        norm.fit(make_windows(n=1))
    assert isinstance(info.value, ValueError)
    with pytest.raises(errors.ConfigError):
        BandNormalizer.from_dict({"mode": "robust", "stats": {"percentiles": [2, 98]}})


@pytest.mark.parametrize("percentiles", [(98.0, 2.0), (-1.0, 50.0), (5.0, 101.0), (10.0, 10.0)])
def test_invalid_percentiles_are_a_config_error(percentiles) -> None:
    with pytest.raises(errors.ConfigError, match="percentiles"):
        BandNormalizer(mode="percentile", percentiles=percentiles).fit(make_windows(n=1))


def test_band_count_change_is_a_config_error() -> None:
    norm = BandNormalizer().partial_fit(np.ones((3, 4, 4)))
    with pytest.raises(errors.ConfigError, match="3 bands"):
        norm.partial_fit(np.ones((4, 4, 4)))


# --- serialization ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_to_dict_from_dict_round_trip(mode: str) -> None:
    windows = make_windows(seed=21)
    norm = BandNormalizer(mode=mode, percentiles=(1.0, 99.0)).fit(windows)
    params = json.loads(json.dumps(norm.to_dict()))  # the bundle stores it as JSON
    assert params["mode"] == mode and params["clip"] == norm.clip
    np.testing.assert_array_equal(params["center"], norm.center_)
    np.testing.assert_array_equal(params["scale"], norm.scale_)
    restored = BandNormalizer.from_dict(params)
    assert restored.mode == mode and restored.clip == norm.clip
    assert restored.percentiles == (1.0, 99.0)
    np.testing.assert_array_equal(restored.center_, norm.center_)
    np.testing.assert_array_equal(restored.scale_, norm.scale_)
    np.testing.assert_array_equal(restored.fill_values_, norm.fill_values_)
    np.testing.assert_array_equal(restored.percentiles_, norm.percentiles_)
    data = windows[0][0]
    np.testing.assert_array_equal(restored.transform(data), norm.transform(data))
    assert restored.to_dict()["center"] == params["center"]


def test_zscore_round_trip_is_bit_identical_for_many_fits() -> None:
    for seed in range(60):
        rng = np.random.default_rng(seed)
        data = rng.normal(rng.uniform(0, 5000), rng.uniform(0.01, 900), size=(BANDS, 25, 17))
        norm = BandNormalizer().fit([(data, None)])
        restored = BandNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
        np.testing.assert_array_equal(restored.center_, norm.center_, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(restored.scale_, norm.scale_, err_msg=f"seed {seed}")


# --- the model's first layer ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_model_band_normalize_agrees_with_transform(mode: str) -> None:
    windows = make_windows(seed=13)
    norm = BandNormalizer(mode=mode).fit(windows)
    params = norm.to_dict()
    layer = BandNormalize(params["center"], params["scale"], params["clip"])
    batch = np.stack([d for d, _ in windows[:3]])  # raw values, (N, C, H, W) float32
    batch[0, :, 0, 0] = 1e6  # exercise the clip in both
    with torch.no_grad():
        got = layer(torch.from_numpy(batch)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, norm.transform(batch), rtol=0, atol=1e-5)


def test_model_band_normalize_agrees_for_reflectance_scale_values() -> None:
    """Small physical values (scale/offset applied) keep the same agreement."""
    rng = np.random.default_rng(17)
    data = rng.uniform(0.0, 0.6, size=(2, BANDS, 32, 32)).astype(np.float32)
    norm = BandNormalizer().partial_fit(data)
    layer = BandNormalize(norm.center_.tolist(), norm.scale_.tolist(), norm.clip)
    with torch.no_grad():
        got = layer(torch.from_numpy(data)).numpy()
    np.testing.assert_allclose(got, norm.transform(data), rtol=0, atol=1e-5)
