"""Class maps published to S3-compatible object storage (``--output s3://bucket/map.tif``).

A map for an ``s3://`` output is built in a local staging folder exactly like a local map (so
its journal and ``--resume`` work) and uploaded only when complete: the QGIS style and the run
summary first, the map last. An S3 PUT (single or multipart) appears whole or not at all, so a
scheduled job never publishes a partial map, nor a map without its sidecars. The staged files are
removed after the upload; when it fails they stay, and ``--resume`` uploads them.

Storage is configured as for GDAL's ``/vsis3/``: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` (or boto3's profiles), ``AWS_REGION`` or
``AWS_DEFAULT_REGION``, ``AWS_S3_ENDPOINT`` (``host[:port]``; ``AWS_HTTPS=NO`` for http) and
``AWS_VIRTUAL_HOSTING``. boto3 (the ``s3`` extra) is imported only for ``s3://`` outputs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from georaster_quant.errors import OutputPathError, PublishError
from georaster_quant.io import InputPaths, atomic_path
from georaster_quant.runner import journal_exists, sidecars

#: Where maps for s3:// outputs are built, if set; else a folder in the system's temp folder.
STAGING_ENV = "GEORASTER_QUANT_STAGING"
CONTENT_TYPES = {".tif": "image/tiff", ".json": "application/json", ".qml": "text/xml"}
NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def is_remote_output(output: str) -> bool:
    """Whether ``--output`` names object storage rather than a local path."""
    return output.startswith("s3://")


def _gdal_true(value: str) -> bool:
    """A boolean configuration value read the way GDAL reads it."""
    return value.strip().upper() not in {"NO", "FALSE", "OFF", "0"}


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


@contextlib.contextmanager
def _storage_errors(message: str, then: str = "") -> Iterator[None]:
    """Turn a boto3 failure into a :class:`PublishError`: ``message (what went wrong)then``."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise PublishError(f"{message} ({_first_line(exc)}){then}") from exc


class S3Output:
    """An ``s3://`` output: one map key, or a prefix for several maps; staged locally.

    Maps are staged under ``$GEORASTER_QUANT_STAGING`` (else the temp folder) in a folder named
    after the URI, so a rerun with ``--resume`` on the same machine finds the journal.
    """

    def __init__(self, uri: str, several: bool = False):
        self.uri = uri
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise OutputPathError(f"{uri}: no bucket; use s3://bucket/map.tif or s3://bucket/dir/")
        self.bucket = bucket
        self.several = several or key == "" or key.endswith("/")
        if self.several:
            self.prefix, name = (key.rstrip("/") + "/" if key.strip("/") else ""), ""
        else:
            head, _, name = key.rpartition("/")
            self.prefix = head + "/" if head else ""
        root = os.environ.get(STAGING_ENV) or Path(tempfile.gettempdir()) / "georaster-quant"
        digest = hashlib.sha256(f"s3://{bucket}/{self.prefix}{name}".encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        #: The local output path that stands for the URI (a folder ends with a separator).
        self.staging = str(self.folder) + os.sep if self.several else str(self.folder / name)

    def uri_of(self, out: Path) -> str:
        """The object URI of a staged map (or sidecar)."""
        return f"s3://{self.bucket}/{self.prefix}{out.name}"

    @functools.cached_property
    def client(self) -> Any:
        """A boto3 S3 client configured from GDAL's AWS_* variables."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise PublishError(
                f"{self.uri}: writing to S3 needs boto3: pip install 'georaster-quant[s3]'"
            ) from exc
        endpoint = os.environ.get("AWS_S3_ENDPOINT")
        if endpoint and "://" not in endpoint:
            scheme = "https" if _gdal_true(os.environ.get("AWS_HTTPS", "YES")) else "http"
            endpoint = f"{scheme}://{endpoint}"
        virtual = os.environ.get("AWS_VIRTUAL_HOSTING")
        style = {}
        if virtual is not None:
            style["addressing_style"] = "virtual" if _gdal_true(virtual) else "path"
        return boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            config=Config(s3=style),
        )

    def _exists(self, key: str | None = None) -> bool:
        """Whether the bucket (``key=None``) or an object exists."""
        client = self.client  # first: says what to install when boto3 is missing
        from botocore.exceptions import ClientError

        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        with _storage_errors(f"{where}: cannot check whether it exists"):
            try:
                if key is None:
                    client.head_bucket(Bucket=self.bucket)
                else:
                    client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in NOT_FOUND:
                    return False
                raise
        return True

    def prepare(self, inputs: Sequence[str], outputs: Sequence[Path], *, overwrite: bool) -> None:
        """Refuse a missing bucket, an input as output, an existing map or a staged one.

        All before any work; ``overwrite`` (also set by ``--resume``) accepts existing and
        staged maps. Then creates the staging folder.
        """
        if not self._exists():
            raise PublishError(f"s3://{self.bucket}: no such bucket")
        every_input = InputPaths(inputs)
        for out in outputs:
            for path in (out, *sidecars(out)):  # the map and what is uploaded beside it
                every_input.check(self.uri_of(path))
        for out in outputs:
            uri = self.uri_of(out)
            if not overwrite and self._exists(self.prefix + out.name):
                raise OutputPathError(f"{uri}: already exists (pass --overwrite to replace it)")
            if not overwrite and self.staged(out):
                raise OutputPathError(
                    f"{uri}: a finished map of an earlier run waits for upload in {out.parent} "
                    "(pass --resume to upload it, or --overwrite to rebuild it)"
                )
        self.folder.mkdir(parents=True, exist_ok=True)

    def staged(self, out: Path) -> bool:
        """Whether a finished map waits in the staging folder (its upload failed)."""
        return out.exists() and not journal_exists(out)

    def done(self, out: Path) -> bool:
        """For ``--resume``: the map is published and nothing is staged for it."""
        return not out.exists() and not journal_exists(out) and self._exists(self.prefix + out.name)

    def check_same_run(self, out: Path, signature: str) -> None:
        """For ``--resume`` of a published map: refuse one that another run made.

        ``signature`` is :func:`georaster_quant.runner.run_signature` of this run; the
        published run summary must record the same.
        """
        from botocore.exceptions import ClientError

        key = self.prefix + sidecars(out)[1].name
        summary: dict[str, Any] = {}
        with _storage_errors(f"s3://{self.bucket}/{key}: cannot read the run summary"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                summary = json.loads(body)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in NOT_FOUND:
                    raise
            except ValueError:
                pass
        if not isinstance(summary, dict) or summary.get("run_signature") != signature:
            raise OutputPathError(
                f"{self.uri_of(out)}: already published, but not by this run (other settings, "
                "weights, backend or input, or no run summary saying how); rerun with --overwrite"
            )

    def cleanup(self) -> None:
        """Remove the staging folder if nothing is left in it."""
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def publishing(self, predict: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        """Wrap ``predict`` (``runner.predict_raster``'s signature): build the staged map, upload.

        With ``opts.resume``, ``predict`` checks that a finished map left by a failed upload was
        made by this same run (and skips it), and the map is uploaded as it is.
        """

        def run(backend: Any, image: str, out: Path, opts: Any) -> dict[str, Any]:
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                predict(backend, image, out, opts)
                return self.upload(out)
            finally:
                self.cleanup()  # empty after an upload, or a failed run

        return run

    def upload(self, out: Path) -> dict[str, Any]:
        """Upload a staged map: sidecars first, the map last; remove the staged files.

        Returns the run summary, whose ``output`` now names the map's URI.
        """
        style_path, summary_path = sidecars(out)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["output"] = self.uri_of(out)
        with atomic_path(summary_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        files = [style_path, summary_path, out]
        kept = f"; the finished map is kept in {out.parent}: rerun with --resume to upload it"
        for path in files:
            with _storage_errors(f"{self.uri_of(out)}: upload failed", kept):
                self.client.upload_file(
                    str(path),
                    self.bucket,
                    self.prefix + path.name,
                    ExtraArgs={"ContentType": CONTENT_TYPES[path.suffix]},
                )
        for path in files:
            path.unlink()
        return summary
