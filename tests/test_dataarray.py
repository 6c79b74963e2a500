"""The DataArray adapter reads exactly what the file reader reads."""

import numpy as np
import pytest
import rioxarray

from georaster_quant.dataarray import DataArrayReader
from georaster_quant.errors import RasterInputError
from georaster_quant.io import RasterReader
from georaster_quant.stream import iter_batches
from georaster_quant.tiling import TileGrid, Window


@pytest.fixture
def scene(make_tif):
    rng = np.random.default_rng(3)
    array = rng.integers(1, 5000, size=(4, 150, 131)).astype("uint16")
    array[:, 10:30, 5:20] = 0
    return make_tif("scene.tif", array, nodata=0, descriptions=["blue", "green", "red", "nir"])


@pytest.mark.parametrize("chunks", [None, {"x": 64, "y": 48}])
def test_reads_match_the_file_reader(scene, chunks):
    da = rioxarray.open_rasterio(scene, chunks=chunks)
    windows = [Window(0, 0, 64, 64), Window(-20, 100, 64, 64), Window(120, -5, 50, 40)]
    with RasterReader(scene) as ref, DataArrayReader(da) as reader:
        assert reader.info.band_names == ("blue", "green", "red", "nir")
        assert reader.info.nodata == 0
        assert reader.info.transform == ref.info.transform
        for w in windows:
            a, av = ref.read(w)
            b, bv = reader.read(w)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(av, bv)


def test_batches_match_and_band_selection(scene):
    da = rioxarray.open_rasterio(scene, chunks={"x": 64, "y": 64})
    grid = TileGrid(150, 131, 64, 16)
    fill = np.array([1.0, 2.0])
    with RasterReader(scene, bands=[3, 1]) as ref, DataArrayReader(da, bands=[3, 1]) as reader:
        for a, b in zip(
            iter_batches(ref, grid, fill, 50), iter_batches(reader, grid, fill, 50), strict=True
        ):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.valid_fraction, b.valid_fraction)


def test_plain_2d_array_and_bad_dims():
    import xarray as xr

    da = xr.DataArray(np.arange(12, dtype="float32").reshape(3, 4), dims=("y", "x"))
    reader = DataArrayReader(da)
    data, valid = reader.read(Window(0, 0, 3, 4))
    assert data.shape == (1, 3, 4) and valid.all()
    with pytest.raises(RasterInputError, match="dims"):
        DataArrayReader(xr.DataArray(np.zeros((2, 2, 2)), dims=("t", "y", "x")))
