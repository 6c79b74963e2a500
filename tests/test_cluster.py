"""predict on a real dask.distributed cluster: a scheduler and two worker processes on loopback."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import rasterio
import rioxarray
from synth_helpers import assert_one_line_error, run_cli, run_cli_subprocess

from georaster_quant.lazy import predict_dataarray
from georaster_quant.synth import SceneSpec, generate_scene

pytest_plugins = ["conftest_synth"]


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster with two single-threaded worker processes, and a client of it."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """An unseen 640x384 scene: 10 x 6 cells at the default stride, 40 x 24 at stride 16."""
    out = tmp_path_factory.mktemp("cluster_scene")
    return generate_scene(out, SceneSpec(384, 640, 4, 4242), progress=False)[0]


def worker_loads(client) -> dict[str, int]:
    from georaster_quant import backend

    return client.run(lambda: backend.LOADS)


def predict(capsys, bundle, image, output, *extra):
    return run_cli(
        capsys, "predict", "--weights", bundle, "--image", image, "--output", output,
        "--quiet", *extra,
    )  # fmt: skip


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs, src.tags()


def test_scheduler_map_equals_single_process(capsys, cluster, trained_bundle, scene, tmp_path):
    cluster, client = cluster
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    assert predict(capsys, trained_bundle, scene, local, "--stride", "16")[0] == 0
    code, out, err = predict(
        capsys, trained_bundle, scene, remote, "--stride", "16",
        "--scheduler", cluster.scheduler_address,
    )  # fmt: skip
    assert code == 0, err
    a, b = read(local), read(remote)
    np.testing.assert_array_equal(b[0], a[0])
    assert b[1:3] == a[1:3]
    assert b[3]["BACKEND"] == "torch"
    summary = json.loads((tmp_path / "remote.tif.json").read_text())
    assert summary["ran_on"] == f"dask {cluster.scheduler_address} (2 workers)"
    assert f"torch on dask {cluster.scheduler_address}" in out
    # 40 rows in 8 tasks (2 threads x 4): both workers ran tasks, each loaded the model once.
    assert worker_loads(client) == {w: 1 for w in client.nthreads()}
    assert not (tmp_path / ".remote.tif.parts").exists()


def test_lazy_dataset_computes_on_the_cluster(cluster, int8_bundle, scene, tmp_path):
    _, client = cluster
    da = rioxarray.open_rasterio(scene, chunks=128)
    ds = predict_dataarray(da, int8_bundle, stride=32, chunks=128)
    on_cluster = client.compute(ds).result()
    here = ds.compute(scheduler="threads")
    np.testing.assert_array_equal(on_cluster["class"].values, here["class"].values)
    np.testing.assert_array_equal(on_cluster["confidence"].values, here["confidence"].values)
    loads = worker_loads(client)
    assert set(loads.values()) <= {1, 2}  # at most the FP32 bundle (other test) and this one


def test_bad_input_on_the_cluster_fails_alone(capsys, cluster, trained_bundle, scene, tmp_path):
    cluster, _ = cluster
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])
    out = tmp_path / "maps"
    code, stdout, err = predict(
        capsys, trained_bundle, scene, out, "--image", truncated,
        "--scheduler", cluster.scheduler_address,
    )  # fmt: skip
    assert code == 2
    assert "truncated.tif" in err
    assert (out / f"{scene.stem}_classes.tif").is_file()
    assert not (out / "truncated_classes.tif").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_unreachable_scheduler_is_a_one_line_error(trained_bundle, scene, tmp_path):
    # The real command in its own process: stderr is the command's alone, not the test
    # process's, where the cluster fixture's logging also writes.
    out = tmp_path / "map.tif"
    proc = run_cli_subprocess(
        "predict", "--weights", trained_bundle, "--image", scene, "--output", out,
        "--scheduler", "tcp://127.0.0.1:9",
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "tcp://127.0.0.1:9")
    assert not out.exists()


def test_usage_errors(capsys, trained_bundle, scene, tmp_path):
    out = tmp_path / "map.tif"
    for extra in (
        ("--scheduler", "tcp://127.0.0.1:9", "--dask-workers", "2"),
        ("--dask-workers", "2", "--workers", "1"),
    ):
        code, _, err = predict(capsys, trained_bundle, scene, out, *extra)
        assert code == 2 and "exclude" in err or "drop --workers" in err, err
    assert not out.exists()


@pytest.mark.slow
def test_dask_workers_starts_a_local_cluster(capsys, trained_bundle, scene, tmp_path):
    local, remote = tmp_path / "local.tif", tmp_path / "remote.tif"
    assert predict(capsys, trained_bundle, scene, local)[0] == 0
    code, stdout, err = predict(capsys, trained_bundle, scene, remote, "--dask-workers", "2")
    assert code == 0, err
    np.testing.assert_array_equal(read(remote)[0], read(local)[0])
