"""Rasters over HTTP (a range-capable server) and S3 (moto's server), on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from synth_helpers import assert_one_line_error, run_cli, run_cli_subprocess

from georaster_quant.io import RasterReader
from georaster_quant.publish import S3Output

pytest_plugins = ["conftest_synth"]


#: A range-capable static file server, run in its own process: GDAL may hold the GIL while
#: it waits for a response, so a server thread in the test process could never answer.
HTTP_SERVER = r"""
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


FAIL = {int(n) for n in sys.argv[2].split(",") if n} if len(sys.argv) > 2 else set()


class RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ranges = 0  # Range requests answered so far; those numbered in FAIL get a 503

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not path.is_file() or not rng:
            return super().send_head()
        RangeHandler.ranges += 1
        if RangeHandler.ranges in FAIL:
            self.send_error(503)
            return None
        size = path.stat().st_size
        start_s, end_s = rng.removeprefix("bytes=").split(",")[0].split("-")
        start = int(start_s)
        end = min(int(end_s) if end_s else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        if getattr(self, "remaining", None) is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self.remaining))
        self.remaining = None


root = sys.argv[1]
def handler(*a, **k):
    return RangeHandler(*a, directory=root, **k)


server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def _http_server(root: Path, fail: str = ""):
    """A Range-capable server of ``root``; Range requests numbered in ``fail`` get a 503."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HTTP_SERVER, str(root), fail], stdout=subprocess.PIPE, text=True
    )
    try:
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def http_root(tmp_path):
    with _http_server(tmp_path) as url:
        yield tmp_path, url


def test_transient_http_errors_while_reading_are_retried(
    capsys, monkeypatch, small_scene, trained_bundle, tmp_path
):
    # Block rows are fetched with parallel multi-range requests, which GDAL does not retry.
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    root = tmp_path / "www"
    root.mkdir()
    (root / "scene.tif").write_bytes(Path(small_scene[0]).read_bytes())
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    code, _, err = run_cli(
        capsys, "predict", "--weights", trained_bundle, "--image", small_scene[0],
        "--output", local, "-q",
    )  # fmt: skip
    assert code == 0, err
    with _http_server(root, fail="2,3") as url:  # the first block row, twice
        code, _, err = run_cli(
            capsys, "predict", "--weights", trained_bundle, "--image", f"{url}/scene.tif",
            "--output", remote, "-q",
        )  # fmt: skip
    assert code == 0, err
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        assert np.array_equal(a.read(), b.read())


def test_a_read_error_that_persists_is_one_line_and_no_output(
    monkeypatch, small_scene, trained_bundle, tmp_path
):
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")
    root = tmp_path / "www"
    root.mkdir()
    (root / "scene.tif").write_bytes(Path(small_scene[0]).read_bytes())
    out = tmp_path / "map.tif"
    every_read = ",".join(str(n) for n in range(2, 100))  # the header reads, nothing after
    with _http_server(root, fail=every_read) as url:
        done = run_cli_subprocess(
            "predict", "--weights", str(trained_bundle), "--image", f"{url}/scene.tif",
            "--output", str(out), "-q",
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "scene.tif" in lines[0], lines
    assert not out.exists() and list(tmp_path.iterdir()) == [root]


def test_http_raster_reads_like_the_local_file(http_root, small_scene):
    root, url = http_root
    (root / "scene.tif").write_bytes(Path(small_scene[0]).read_bytes())
    from georaster_quant.tiling import Window

    w = Window(-10, 100, 64, 64)
    with RasterReader(small_scene[0]) as local, RasterReader(f"{url}/scene.tif") as remote:
        assert remote.info.band_names == local.info.band_names
        a, av = local.read(w)
        b, bv = remote.read(w)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(av, bv)


def test_predict_from_http_equals_local_and_missing_url_is_bad_input(
    capsys, http_root, small_scene, trained_bundle, tmp_path
):
    root, url = http_root
    (root / "scene.tif").write_bytes(Path(small_scene[0]).read_bytes())
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    for src, out in ((small_scene[0], local), (f"{url}/scene.tif", remote)):
        code, _, err = run_cli(
            capsys, "predict", "--weights", trained_bundle, "--image", src, "--output", out, "-q"
        )
        assert code == 0, err
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        assert np.array_equal(a.read(), b.read())
    missing = tmp_path / "missing.tif"
    code, _, err = run_cli(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        f"{url}/nope.tif",
        "--output",
        missing,
        "-q",
    )
    assert code == 2 and "nope.tif" in err and not missing.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_bucket(monkeypatch):
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    client.create_bucket(Bucket="rasters")
    yield client
    proc.terminate()
    proc.wait(timeout=10)


def test_predict_from_s3_equals_local(capsys, s3_bucket, small_scene, trained_bundle, tmp_path):
    s3_bucket.upload_file(str(small_scene[0]), "rasters", "scenes/scene.tif")
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    for src, out in ((small_scene[0], local), ("s3://rasters/scenes/scene.tif", remote)):
        code, _, err = run_cli(
            capsys, "predict", "--weights", trained_bundle, "--image", src, "--output", out, "-q"
        )
        assert code == 0, err
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        assert np.array_equal(a.read(), b.read())
    assert os.environ["AWS_S3_ENDPOINT"].startswith("127.0.0.1")


def _predict(capsys, weights, images, output, *extra) -> tuple[int, str, str]:
    """``georaster-quant predict -q`` of ``images`` into ``output``: (code, stdout, stderr)."""
    image_args = [a for image in images for a in ("--image", image)]
    return run_cli(
        capsys, "predict", "--weights", weights, *image_args, "--output", output, "-q", *extra
    )


def _download(client, key: str, path: Path) -> Path:
    client.download_file("rasters", key, str(path))
    return path


def _keys(client, prefix: str = "") -> list[str]:
    listing = client.list_objects_v2(Bucket="rasters", Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture
def staging(tmp_path, monkeypatch) -> Path:
    """A private staging folder for s3:// outputs, to see what a run leaves behind."""
    folder = tmp_path / "staging"
    monkeypatch.setenv("GEORASTER_QUANT_STAGING", str(folder))
    return folder


def test_predict_to_s3_publishes_the_local_map_and_its_sidecars(
    capsys, s3_bucket, staging, small_scene, trained_bundle, tmp_path
):
    local = tmp_path / "local.tif"
    uri = "s3://rasters/maps/map.tif"
    for out in (local, uri):
        code, stdout, err = _predict(capsys, trained_bundle, [small_scene[0]], out)
        assert code == 0, err
    assert stdout.startswith(f"{uri}: ")
    assert _keys(s3_bucket) == ["maps/map.qml", "maps/map.tif", "maps/map.tif.json"]
    remote = _download(s3_bucket, "maps/map.tif", tmp_path / "remote.tif")
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        assert np.array_equal(a.read(), b.read())
        assert a.tags() == b.tags() and a.descriptions == b.descriptions
    qml = _download(s3_bucket, "maps/map.qml", tmp_path / "remote.qml")
    assert qml.read_text() == local.with_suffix(".qml").read_text()
    summary = json.loads(_download(s3_bucket, "maps/map.tif.json", tmp_path / "s.json").read_text())
    assert summary["output"] == uri and summary["tiles_inferred"] == summary["tiles_total"]
    assert not staging.exists() or not any(staging.rglob("*"))


def test_existing_s3_object_is_refused_without_overwrite(
    capsys, s3_bucket, staging, small_scene, trained_bundle
):
    s3_bucket.put_object(Bucket="rasters", Key="maps/map.tif", Body=b"keep me")
    code, out, err = _predict(capsys, trained_bundle, [small_scene[0]], "s3://rasters/maps/map.tif")
    assert_one_line_error(code, out, err, "s3://rasters/maps/map.tif", "--overwrite")
    body = s3_bucket.get_object(Bucket="rasters", Key="maps/map.tif")["Body"].read()
    assert body == b"keep me" and _keys(s3_bucket) == ["maps/map.tif"]


def test_batch_to_an_s3_prefix(capsys, s3_bucket, staging, small_scene, trained_bundle, tmp_path):
    other = tmp_path / "other.tif"
    other.write_bytes(Path(small_scene[0]).read_bytes())
    code, stdout, err = _predict(
        capsys, trained_bundle, [small_scene[0], other], "s3://rasters/batch/"
    )
    assert code == 0, err
    assert "2 of 2 maps written to s3://rasters/batch/" in stdout
    assert _keys(s3_bucket, "batch/") == [
        f"batch/{stem}_classes{ext}"
        for stem in ("other", "scene")
        for ext in (".qml", ".tif", ".tif.json")
    ]
    a = _download(s3_bucket, "batch/scene_classes.tif", tmp_path / "a.tif")
    b = _download(s3_bucket, "batch/other_classes.tif", tmp_path / "b.tif")
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert np.array_equal(x.read(), y.read())
    assert not staging.exists() or not any(staging.rglob("*"))


def test_nothing_is_uploaded_when_the_run_fails(
    capsys, s3_bucket, staging, small_scene, trained_bundle, tmp_path
):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(Path(small_scene[0]).read_bytes()[:5000])
    code, out, err = _predict(capsys, trained_bundle, [bad], "s3://rasters/maps/map.tif")
    assert_one_line_error(code, out, err, "bad.tif")
    assert _keys(s3_bucket) == []
    assert not staging.exists() or not any(staging.rglob("*"))


def test_name_collision_in_an_s3_folder_names_the_uri(
    capsys, s3_bucket, staging, small_scene, trained_bundle, tmp_path
):
    other = tmp_path / "elsewhere" / Path(small_scene[0]).name
    other.parent.mkdir()
    other.write_bytes(Path(small_scene[0]).read_bytes())
    code, out, err = _predict(capsys, trained_bundle, [small_scene[0], other], "s3://rasters/m/")
    name = Path(small_scene[0]).stem + "_classes.tif"
    assert_one_line_error(code, out, err, f"s3://rasters/m/{name}", "rename one input")


def test_an_s3_map_never_replaces_another_input(capsys, s3_bucket, staging, trained_bundle):
    # The map of a.tif would be the second input, named the GDAL way: refused before work.
    inputs = ["s3://rasters/in/a.tif", "/vsis3/rasters/in/a_classes.tif"]
    code, out, err = _predict(capsys, trained_bundle, inputs, "s3://rasters/in/")
    assert_one_line_error(code, out, err, "s3://rasters/in/a_classes.tif", "is the input")
    assert _keys(s3_bucket) == []


def test_failed_upload_keeps_the_staged_map_and_resume_uploads_it(
    capsys, monkeypatch, s3_bucket, staging, small_scene, trained_bundle
):
    from georaster_quant import runner
    from georaster_quant.backend import open_backend
    from georaster_quant.errors import PublishError
    from georaster_quant.runner import PredictOptions, predict_raster

    uri = "s3://later/map.tif"
    target = S3Output(uri)
    out = Path(target.staging)
    run = target.publishing(predict_raster)
    with pytest.raises(PublishError) as info:  # the bucket does not exist (yet)
        run(open_backend(trained_bundle), str(small_scene[0]), out, PredictOptions())
    assert str(info.value).startswith(f"{uri}: upload failed (")
    assert str(out.parent) in str(info.value) and "--resume" in str(info.value)
    assert out.is_file() and out.with_suffix(".qml").is_file()
    s3_bucket.create_bucket(Bucket="later")
    code, stdout, err = _predict(capsys, trained_bundle, [small_scene[0]], uri)
    assert_one_line_error(code, stdout, err, uri, "waits for upload", "--resume")
    assert out.is_file()

    real, skipped = runner.predict_raster, []

    def checked(*args):  # --resume checks that this run made the staged map; no rebuild
        summary = real(*args)
        skipped.append(summary.get("skipped"))
        return summary

    monkeypatch.setattr(runner, "predict_raster", checked)
    code, _, err = _predict(
        capsys, trained_bundle, [small_scene[0]], uri, "--resume", "--stride", "32"
    )
    assert code == 2 and "not by this run" in err and out.is_file(), err  # other settings
    code, stdout, err = _predict(capsys, trained_bundle, [small_scene[0]], uri, "--resume")
    assert code == 0, err
    assert skipped == [True]
    assert stdout.startswith(f"{uri}: ")
    listing = s3_bucket.list_objects_v2(Bucket="later")["Contents"]
    assert sorted(o["Key"] for o in listing) == ["map.qml", "map.tif", "map.tif.json"]
    assert not out.exists() and not out.parent.exists()
    code, stdout, err = _predict(capsys, trained_bundle, [small_scene[0]], uri, "--resume")
    assert code == 0 and stdout == f"{uri}: already complete, skipped\n", err
    assert not out.parent.exists()  # the skip leaves no staging folder behind
    code, stdout, err = _predict(
        capsys, trained_bundle, [small_scene[0]], uri, "--resume", "--stride", "32"
    )
    assert code == 2 and "already published, but not by this run" in err, err


def test_s3_output_without_boto3_says_what_to_install(capsys, monkeypatch, small_scene, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)
    code, out, err = _predict(capsys, tmp_path / "no-bundle", [small_scene[0]], "s3://b/m.tif")
    assert_one_line_error(code, out, err, "s3://b/m.tif", "pip install 'georaster-quant[s3]'")


@pytest.mark.parametrize(
    ("uri", "several", "staged", "map_uri"),
    [
        ("s3://b/dir/map.tif", False, "map.tif", "s3://b/dir/map.tif"),
        ("s3://b/map.tif", False, "map.tif", "s3://b/map.tif"),
        ("s3://b/dir/", False, os.sep, "s3://b/dir/x_classes.tif"),
        ("s3://b/dir", True, os.sep, "s3://b/dir/x_classes.tif"),
        ("s3://b", True, os.sep, "s3://b/x_classes.tif"),
    ],
)
def test_s3_output_staging_and_keys(staging, uri, several, staged, map_uri):
    target = S3Output(uri, several=several)
    assert target.folder.parent == staging
    folder = str(target.folder) + os.sep
    assert target.staging == (folder if staged == os.sep else str(target.folder / staged))
    assert target.uri_of(target.folder / map_uri.rpartition("/")[2]) == map_uri
    assert S3Output(uri, several=several).folder == target.folder  # --resume finds it
    assert S3Output(uri + ".other").folder != target.folder


def test_upload_sends_the_map_last_and_clears_the_staging(staging):
    target = S3Output("s3://b/dir/map.tif")
    out = Path(target.staging)
    out.parent.mkdir(parents=True)
    out.write_bytes(b"map")
    out.with_suffix(".qml").write_text("<qgis/>")
    out.with_name("map.tif.json").write_text('{"output": "staged"}')
    sent = []

    class Client:
        def upload_file(self, path, bucket, key, ExtraArgs):
            sent.append((bucket, key, ExtraArgs["ContentType"]))

    target.client = Client()
    summary = target.upload(out)
    assert sent == [
        ("b", "dir/map.qml", "text/xml"),
        ("b", "dir/map.tif.json", "application/json"),
        ("b", "dir/map.tif", "image/tiff"),
    ]
    assert summary == {"output": "s3://b/dir/map.tif"}
    assert not any(out.parent.iterdir())
