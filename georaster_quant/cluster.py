"""``predict`` on a dask.distributed cluster: workers classify rows, this process writes the map.

The client plans the run exactly as a local one (grid, journal beside the output, the rows a
resumed run still needs), splits the rows into tasks and submits them. Each task opens the
raster on its worker and runs the same streaming code as a local run
(:class:`~georaster_quant.runner.LocalInference`), with the model loaded once per worker
process (:func:`~georaster_quant.backend.cached_backend`) and as many backend threads as the
worker has. Finished rows come back to the client, which journals and assembles them: the map
is written by one process, so no lock is needed, and it equals a single-process map cell for
cell. Workers must see the raster and the weights at the same path (a shared file system or a
URL) and have this package installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from georaster_quant.backend import read_model_meta
from georaster_quant.errors import ConfigError
from georaster_quant.runner import PredictOptions
from georaster_quant.threads import available_cores
from georaster_quant.tiling import TileGrid

#: Aim for this many tasks per worker thread, so a slow task does not hold up the end.
TASKS_PER_THREAD = 4


def _shared_path(path: str | os.PathLike[str]) -> str:
    """An absolute path for local files (workers may start elsewhere); URLs as they are."""
    path = os.fspath(path)
    return os.path.abspath(path) if "://" not in path else path


def worker_threads() -> int | None:
    """The ``nthreads`` of the dask worker running this task (``None`` outside a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except ValueError:
        return None


def infer_rows(
    weights: str,
    backend: str,
    image: str,
    grid: TileGrid,
    rows: Sequence[int],
    opts: PredictOptions,
    version: str | None = None,
) -> tuple[str, list[tuple[int, dict[str, np.ndarray]]]]:
    """Task: classify ``rows`` of ``image`` on this worker; returns the backend's name and rows.

    ``version`` is the weights' checksum the client planned with (see ``cached_backend``).
    """
    import warnings

    from georaster_quant.backend import cached_backend
    from georaster_quant.contract import open_input
    from georaster_quant.errors import GeoRasterQuantError, RasterMismatchWarning
    from georaster_quant.runner import LocalInference

    model = cached_backend(weights, backend, worker_threads(), version)
    try:
        with warnings.catch_warnings():  # the client has said it once already
            warnings.simplefilter("ignore", RasterMismatchWarning)
            reader = open_input(image, model.meta, opts.bands)
        with reader:
            return model.name, list(LocalInference(model).rows(image, reader, grid, rows, opts))
    except GeoRasterQuantError as exc:
        error = type(exc)(str(exc))
    # Raised outside the handler, so it is sent back with no cause or context: GDAL's
    # exceptions do not survive unpickling, and the client must see our error type to exit 2
    # and go on with the next input.
    raise error


class ClusterInference:
    """Rows of a run classified by the workers of a dask cluster (see the module doc)."""

    def __init__(self, client: Any, weights: str | os.PathLike[str], backend: str = "auto"):
        self.client = client
        self.weights = _shared_path(weights)
        self.backend = backend
        self.meta = read_model_meta(weights)
        self.name = backend  # replaced by the workers' backend once one reports
        self.signed_as = backend  # what runs are signed with: fixed, unlike ``name``
        self.ran_on = self._scheduler = f"dask {client.scheduler.address}"  # + workers in rows()

    def rows(
        self, image: str, reader: Any, grid: TileGrid, rows: Sequence[int], opts: PredictOptions
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Submit ``rows`` in tasks; yield each row as its task comes back."""
        from distributed import as_completed

        nthreads = self.client.nthreads()
        threads = sum(nthreads.values()) or 1
        workers = len(nthreads)
        self.ran_on = f"{self._scheduler} ({workers} worker{'s' * (workers != 1)})"
        size = max(1, -(-len(rows) // (threads * TASKS_PER_THREAD)))
        futures = [
            self.client.submit(
                infer_rows,
                self.weights,
                self.backend,
                _shared_path(image),
                grid,
                list(rows[i : i + size]),
                opts,
                self.meta.weights_info.sha256,
                pure=False,
            )
            for i in range(0, len(rows), size)
        ]
        try:
            for future in as_completed(futures):
                name, done = future.result()
                self.name = name
                yield from done
                future.release()
        finally:
            self.client.cancel(futures)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Any]:
    """A client of the cluster at ``scheduler``, or of a local one with ``n_workers`` processes.

    A local cluster shares this machine's cores between its workers and is closed on exit.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"{scheduler}: no dask scheduler answers ({exc})") from None
        with client:
            yield client
        return
    n = n_workers or 1
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=max(1, available_cores() // n),
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # failed tasks are reported by the client
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
