"""Rasters over HTTP (a range-capable server) and S3 (moto's server), on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from synth_helpers import run_cli

from georaster_quant.io import RasterReader

pytest_plugins = ["conftest_synth"]


#: A range-capable static file server, run in its own process: GDAL may hold the GIL while
#: it waits for a response, so a server thread in the test process could never answer.
HTTP_SERVER = r"""
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not path.is_file() or not rng:
            return super().send_head()
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


@pytest.fixture
def http_root(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HTTP_SERVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    port = int(proc.stdout.readline())
    yield tmp_path, f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


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
