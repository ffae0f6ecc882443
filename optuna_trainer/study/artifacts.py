"""The artifact store: folders (a trial's checkpoint, `best_model/`) kept beside the study, as Optuna artifacts.

`artifact_store` is a directory (on a filesystem every machine mounts) or `s3://bucket/prefix` (any S3-compatible
endpoint, configured the usual way: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...). The store
is Optuna's own (`FileSystemArtifactStore`, `Boto3ArtifactStore` behind Optuna's `Backoff`), and every upload goes
through `optuna.artifacts.upload_artifact`, so Optuna's dashboard lists them with the trial or the study.

An artifact is one file: a folder travels as an uncompressed tar (weights do not compress), with its SHA-256 and size
recorded in the user attribute that names it (`checkpoint_artifact` on a trial, `BEST_MODEL_ARTIFACT_ATTR` on the
study). A download checks both before it unpacks, and unpacks with tarfile's `data` filter (no absolute paths, no
`..`, no links out of the folder, no device files), into a temporary folder renamed into place: a kill mid-download
leaves no half-unpacked checkpoint for a resume to take.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import optuna
from optuna.artifacts import Backoff, FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from optuna_trainer.study.storage import mask_url

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

FIELD = "artifact_store"
S3 = "s3://"
FILE = "file://"
# What an S3 server answers when it refuses the credentials (botocore's ClientError codes).
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403"}


class ArtifactRecord(TypedDict):
    """Which artifact holds a folder, and how to check it: written in the user attribute that names it."""

    artifact_id: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class OpenedArtifactStore:
    """An artifact store opened from `artifact_store`.

    Attributes:
        store: Optuna's store.
        url: the value as given (what the study records for `optuna-trainer best-model`).
        description: printable (the S3 endpoint, never a credential).
    """

    store: ArtifactStore
    url: str
    description: str


class _Prefixed:
    """A store whose keys live under a prefix: `s3://bucket/prefix` (Optuna's Boto3ArtifactStore takes a bucket)."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def validate_artifact_store(value: Any) -> None:
    """The value's form (no I/O): None, a directory path, `file://path`, or `s3://bucket[/prefix]`."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{FIELD}: expected a directory path or 's3://bucket/prefix', got {value!r} ({type(value).__name__})"
        )
    if value.startswith(S3):
        bucket = value[len(S3) :].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{FIELD}: {value!r} names no bucket; use 's3://bucket' or 's3://bucket/prefix'")
        return
    if "://" in value and not value.startswith(FILE):
        scheme = value.split("://", 1)[0]
        raise ValueError(
            f"{FIELD}: unknown scheme {scheme!r} in {mask_url(value)!r}; use a directory (a filesystem every machine "
            "mounts, e.g. /shared/artifacts or file:///shared/artifacts) or 's3://bucket/prefix' (any S3-compatible "
            "endpoint, through the AWS environment variables)"
        )


def open_artifact_store(value: str) -> OpenedArtifactStore:
    """Open the store `value` names and check it: a small object written, read back and removed. Raises `ValueError`
    naming `artifact_store` (a missing boto3, an unwritable directory, an unreachable endpoint, refused credentials, a
    missing bucket), without any credential in the message."""
    validate_artifact_store(value)
    if value.startswith(S3):
        raw, description = _open_s3(value)
        _probe(raw, description)
        # Optuna's Backoff retries the transient failures of a long search (not the check above: a refusal there is
        # an error before training, not a minute of retries).
        return OpenedArtifactStore(Backoff(raw, max_retries=5), value, description)
    path = os.path.abspath(os.path.expanduser(value[len(FILE) :] if value.startswith(FILE) else value))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{FIELD}: cannot create the directory {path!r} ({err.strerror}); give a directory this user can create "
            "and write, on a filesystem every machine of the search mounts"
        ) from None
    store = FileSystemArtifactStore(path)
    _probe(store, path)
    return OpenedArtifactStore(store, value, path)


def _open_s3(value: str) -> tuple[ArtifactStore, str]:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ValueError(
            f"{FIELD}: {value!r} needs boto3: pip install 'optuna-trainer[s3]' (or pip install boto3)"
        ) from None
    bucket, _, prefix = value[len(S3) :].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    # Short connect timeouts and few retries: an unreachable endpoint is an error before training, not minutes of
    # silence.
    client = boto3.client(
        "s3", config=Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 3, "mode": "standard"})
    )
    endpoint = mask_url(str(client.meta.endpoint_url))
    store = _boto3_store(bucket, client)
    return (_Prefixed(store, prefix) if prefix else store), f"s3://{bucket}/{prefix} at {endpoint}"


def _boto3_store(bucket: str, client: Any) -> ArtifactStore:
    from optuna.artifacts import Boto3ArtifactStore

    # avoid_buf_copy: a checkpoint is uploaded from its file, not copied into memory first (it may be GBs).
    return Boto3ArtifactStore(bucket, client=client, avoid_buf_copy=True)


def _probe(store: ArtifactStore, description: str) -> None:
    key = f"optuna_trainer-probe-{uuid.uuid4().hex}"
    payload = b"optuna_trainer artifact store check"
    try:
        store.write(key, io.BytesIO(payload))
        reader = store.open_reader(key)
        try:
            read_back = reader.read()
        finally:
            reader.close()
        store.remove(key)
    except Exception as err:  # noqa: BLE001 - every failure is named below, before any training
        raise ValueError(f"{FIELD}: {description} {_why(err)}") from None
    if read_back != payload:
        raise ValueError(f"{FIELD}: {description} gave back other bytes than were written")


def _why(err: BaseException) -> str:
    """Why the store refused, in words, with no credential (botocore's messages carry none; the URL is masked)."""
    code = ""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    name = type(err).__name__
    if code in _REFUSED:
        return (
            f"refused the credentials ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) "
            "and the bucket's permissions"
        )
    if code == "NoSuchBucket":
        return "has no such bucket: create it first, or fix the name"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "has no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"):
        return "cannot be reached: check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and the network"
    if isinstance(err, PermissionError):
        return "is not writable (permission denied): pick a directory this user can write"
    if isinstance(err, OSError):
        return f"cannot be written: {err.strerror or err}"
    return f"failed a write/read check: {name}: {mask_url(str(err))}"


# ---- folders as artifacts ------------------------------------------------------------------------------------


def upload_folder(
    opened: OpenedArtifactStore,
    folder: str,
    target: optuna.trial.Trial | optuna.Study,
) -> ArtifactRecord:
    """Upload `folder` as one artifact of `target` (a running trial or the study); its record.

    The tar is written next to the folder (the disk that holds the checkpoint has room for its copy; /tmp may not)
    and removed afterwards, whatever happens.
    """
    parent = os.path.dirname(os.path.abspath(folder))
    fd, tar_path = tempfile.mkstemp(prefix=f".{os.path.basename(folder)}.", suffix=".tar", dir=parent)
    os.close(fd)
    try:
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(os.listdir(folder)):
                tar.add(os.path.join(folder, name), arcname=name)
        digest, size = _sha256(tar_path)
        artifact_id = upload_artifact(artifact_store=opened.store, file_path=tar_path, study_or_trial=target)
    finally:
        os.remove(tar_path)
    return ArtifactRecord(artifact_id=artifact_id, sha256=digest, bytes=size)


def download_folder(opened: OpenedArtifactStore, record: dict[str, Any], dest: str) -> str:
    """Download the artifact `record` names and unpack it as `dest` (which must not exist); return `dest`.

    Raises `ValueError` when the bytes are not the recorded ones, `ArtifactNotFound` when the store lacks it.
    """
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", dir=parent)
    try:
        tar_path = os.path.join(staging, "artifact.tar")
        reader = opened.store.open_reader(record["artifact_id"])
        try:
            with open(tar_path, "wb") as out:
                shutil.copyfileobj(reader, out, length=1 << 20)
        finally:
            reader.close()
        digest, size = _sha256(tar_path)
        if (digest, size) != (record.get("sha256"), record.get("bytes")):
            raise ValueError(
                f"artifact {record['artifact_id']} in {opened.description} is not the one recorded "
                f"({size} bytes, sha256 {digest[:12]}..., recorded {record.get('bytes')} bytes, sha256 "
                f"{str(record.get('sha256'))[:12]}...)"
            )
        unpacked = os.path.join(staging, "folder")
        with tarfile.open(tar_path) as tar:
            tar.extractall(unpacked, filter="data")  # refuses absolute paths, "..", links out, devices
        os.replace(unpacked, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def remove_artifact(opened: OpenedArtifactStore, artifact_id: str) -> None:
    """Remove an artifact from the store; one already gone is no error. Optuna keeps its metadata (an attribute of
    a trial or study cannot be deleted): the user attribute that names the live artifact is what counts."""
    try:
        opened.store.remove(artifact_id)
    except ArtifactNotFound:
        pass


def _sha256(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


__all__ = [
    "ArtifactRecord",
    "OpenedArtifactStore",
    "download_folder",
    "open_artifact_store",
    "remove_artifact",
    "upload_folder",
    "validate_artifact_store",
]
