"""predict on a VRT that stacks one single-band GeoTIFF per band, as Sentinel-2 ships them."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from synth_helpers import assert_one_line_error, read, run_cli

from georaster_quant.runner import _parts_dir

pytest_plugins = ["conftest_synth"]


def split_bands(scene: Path, folder: Path, blocksize: int = 256) -> list[Path]:
    """Write each band of ``scene`` as its own single-band GeoTIFF; returns their paths."""
    with rasterio.open(scene) as src:
        profile = {**src.profile, "count": 1, "blockxsize": blocksize, "blockysize": blocksize}
        paths = []
        for band, name in enumerate(src.descriptions, start=1):
            path = folder / f"{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(band), 1)
            paths.append(path)
    return paths


def write_vrt(like: Path, sources: list[Path], path: Path) -> Path:
    """A VRT with the grid of ``like`` (uint16) whose band i is band 1 of ``sources[i]`` (by
    file name, relative to the VRT), with ``like``'s band names and nodata."""
    with rasterio.open(like) as src:
        assert src.dtypes[0] == "uint16"
        bands = "".join(
            f'<VRTRasterBand dataType="UInt16" band="{i}">'
            f"<Description>{escape(src.descriptions[i - 1])}</Description>"
            f"<NoDataValue>{src.nodata:g}</NoDataValue><SimpleSource>"
            f'<SourceFilename relativeToVRT="1">{escape(source.name)}</SourceFilename>'
            "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>\n"
            for i, source in enumerate(sources, start=1)
        )
        path.write_text(
            f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">\n'
            f"<SRS>{escape(src.crs.to_wkt())}</SRS>\n"
            f"<GeoTransform>{', '.join(map(repr, src.transform.to_gdal()))}</GeoTransform>\n"
            f"{bands}</VRTDataset>\n"
        )
    return path


def predict(capsys, weights: Path, image: Path, output: Path) -> tuple[int, str, str]:
    return run_cli(
        capsys, "predict", "--weights", weights, "--image", image, "--output", output, "-q"
    )


def test_vrt_of_single_band_files_maps_like_the_multiband_file(
    capsys, trained_bundle, small_scene, tmp_path
):
    scene = Path(small_scene[0])
    vrt = write_vrt(scene, split_bands(scene, tmp_path), tmp_path / "stack.vrt")
    with rasterio.open(vrt) as stacked, rasterio.open(scene) as original:
        assert stacked.count == 4 and stacked.descriptions == original.descriptions
        assert np.array_equal(stacked.read(), original.read())
    for image, out in ((scene, tmp_path / "tif.tif"), (vrt, tmp_path / "vrt.tif")):
        code, _, err = predict(capsys, trained_bundle, image, out)
        assert code == 0, err
    assert np.array_equal(read(tmp_path / "vrt.tif"), read(tmp_path / "tif.tif"))


def test_vrt_with_a_missing_source_is_bad_input(capsys, trained_bundle, small_scene, tmp_path):
    scene = Path(small_scene[0])
    sources = split_bands(scene, tmp_path)
    sources[1].unlink()
    vrt = write_vrt(scene, sources, tmp_path / "stack.vrt")
    out = tmp_path / "map.tif"
    code, stdout, err = predict(capsys, trained_bundle, vrt, out)
    assert_one_line_error(code, stdout, err, "stack.vrt", sources[1].name)
    assert not out.exists() and not _parts_dir(out).exists()


def test_read_error_mid_run_ends_it_with_no_output(capsys, trained_bundle, small_scene, tmp_path):
    """The second band's file loses its last blocks: the first rows of the map are computed,
    then the read fails for good; the run ends with exit 2 and leaves nothing.

    (With GDAL_NUM_THREADS, GDAL's message for a truncated tile does not name the file.)
    """
    scene = Path(small_scene[0])
    sources = split_bands(scene, tmp_path, blocksize=64)
    with rasterio.open(sources[1]) as ds:  # 8 x 8 blocks, stored row by row: cut at row 6
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_6", "TIFF", bidx=1))
    sources[1].write_bytes(sources[1].read_bytes()[:offset])
    vrt = write_vrt(scene, sources, tmp_path / "stack.vrt")
    with rasterio.open(vrt) as ds:  # the first block rows still read
        ds.read(window=((0, 6 * 64), (0, ds.width)))
    out = tmp_path / "map.tif"
    code, stdout, err = predict(capsys, trained_bundle, vrt, out)
    assert_one_line_error(code, stdout, err, "stack.vrt", "read failed")
    assert not out.exists() and not _parts_dir(out).exists()
