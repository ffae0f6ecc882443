"""The artifact store (study/artifacts.py): its forms, the check before training, folders up and down, hostile and
damaged artifacts; on a directory and on an S3 server (moto's, started by the tests)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import optuna
import pytest

from optuna_trainer import OptunaTrainingArguments
from optuna_trainer.study.artifacts import (
    download_folder,
    open_artifact_store,
    remove_artifact,
    upload_folder,
    validate_artifact_store,
)
from tests.support import base_args, free_port, s3_server


def _folder(root: Path) -> Path:
    folder = root / "checkpoint-4"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "trainer_state.json").write_text('{"global_step": 4}')
    (folder / "sub" / "rng.pth").write_bytes(b"rng")
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _roundtrip(store_url: str, tmp_path: Path) -> None:
    opened = open_artifact_store(store_url)
    study = optuna.create_study()
    trial = study.ask()
    folder = _folder(tmp_path)
    record = upload_folder(opened, str(folder), trial)
    # Optuna's own record of the artifact, on the trial (its dashboard lists it there).
    assert f"artifacts:{record['artifact_id']}" in study.trials[0].system_attrs
    assert record["bytes"] > 4096 and len(record["sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tar")]  # the tar is gone after the upload
    dest = tmp_path / "elsewhere" / "checkpoint-4"
    download_folder(opened, dict(record), str(dest))
    assert _contents(dest) == _contents(folder)
    assert [p.name for p in dest.parent.iterdir()] == ["checkpoint-4"]  # no staging folder left
    remove_artifact(opened, record["artifact_id"])
    remove_artifact(opened, record["artifact_id"])  # already gone: no error
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        download_folder(opened, dict(record), str(tmp_path / "again"))


class TestForm:
    @pytest.mark.parametrize(
        "value, says",
        [
            ("gs://bucket/x", "unknown scheme 'gs'"),
            ("s3://", "names no bucket"),
            ("", "expected a directory path"),
            (3, "expected a directory path"),
        ],
    )
    def test_refused_naming_the_field(self, value, says):
        with pytest.raises(ValueError, match="^artifact_store: ") as err:
            validate_artifact_store(value)
        assert says in str(err.value)

    def test_the_arguments_refuse_it_at_construction(self, tmp_path):
        with pytest.raises(ValueError, match="artifact_store: unknown scheme 'ftp'"):
            OptunaTrainingArguments(**base_args(tmp_path, artifact_store="ftp://user:secret@host/x"))

    def test_a_password_in_an_unknown_url_is_not_printed(self):
        with pytest.raises(ValueError) as err:
            validate_artifact_store("ftp://user:hunter2@host/x")
        assert "hunter2" not in str(err.value)


class TestDirectory:
    def test_roundtrip(self, tmp_path):
        _roundtrip(str(tmp_path / "store"), tmp_path)

    def test_file_url(self, tmp_path):
        opened = open_artifact_store(f"file://{tmp_path / 'store'}")
        assert opened.description == str(tmp_path / "store")

    def test_a_directory_that_cannot_be_made_is_refused(self, tmp_path):
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with pytest.raises(ValueError, match="^artifact_store: cannot create the directory"):
            open_artifact_store(str(blocker / "store"))

    def test_an_unwritable_directory_is_refused(self, tmp_path, monkeypatch):
        store = tmp_path / "store"
        store.mkdir()
        if os.geteuid() == 0:
            # root writes through permission bits: the write fails as it does on a read-only mount instead.
            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(optuna.artifacts.FileSystemArtifactStore, "write", refuse)
        else:
            store.chmod(0o500)
        with pytest.raises(ValueError, match="is not writable"):
            open_artifact_store(str(store))

    def test_damaged_artifact_is_refused_before_unpacking(self, tmp_path):
        opened = open_artifact_store(str(tmp_path / "store"))
        record = upload_folder(opened, str(_folder(tmp_path)), optuna.create_study())
        path = tmp_path / "store" / record["artifact_id"]
        data = bytearray(path.read_bytes())
        data[600] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="is not the one recorded"):
            download_folder(opened, dict(record), str(tmp_path / "dest"))
        assert not (tmp_path / "dest").exists()

    @staticmethod
    def _hostile(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> dict[str, object]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        payload = buf.getvalue()
        (tmp_path / "store" / "hostile").write_bytes(payload)
        return {"artifact_id": "hostile", "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}

    def test_a_tar_reaching_out_of_its_folder_is_refused(self, tmp_path):
        opened = open_artifact_store(str(tmp_path / "store"))
        record = self._hostile(tmp_path, tarfile.TarInfo("../evil"), b"evil")
        with pytest.raises(tarfile.OutsideDestinationError):
            download_folder(opened, record, str(tmp_path / "sub" / "dest"))
        assert not (tmp_path / "sub" / "evil").exists() and not (tmp_path / "sub" / "dest").exists()

    def test_a_link_out_of_the_folder_is_refused(self, tmp_path):
        opened = open_artifact_store(str(tmp_path / "store"))
        link = tarfile.TarInfo("model.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        record = self._hostile(tmp_path, link)
        with pytest.raises(tarfile.AbsoluteLinkError):
            download_folder(opened, record, str(tmp_path / "sub" / "dest"))
        assert not (tmp_path / "sub" / "dest").exists()

    def test_an_absolute_name_stays_inside_the_folder(self, tmp_path):
        opened = open_artifact_store(str(tmp_path / "store"))
        record = self._hostile(tmp_path, tarfile.TarInfo(f"{tmp_path}/evil"), b"evil")
        download_folder(opened, record, str(tmp_path / "sub" / "dest"))
        assert not (tmp_path / "evil").exists()
        assert (tmp_path / "sub" / "dest" / str(tmp_path).lstrip("/") / "evil").read_bytes() == b"evil"


@pytest.mark.services
class TestS3:
    def test_roundtrip_under_a_prefix(self, tmp_path, monkeypatch):
        import boto3

        with s3_server() as env:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            boto3.client("s3").create_bucket(Bucket="searches")
            _roundtrip("s3://searches/team/sst2", tmp_path)
            # The keys live under the prefix; the check's probe object is gone.
            keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="searches").get("Contents", [])]
            assert keys == []
            opened = open_artifact_store("s3://searches/team/sst2")
            record = upload_folder(opened, str(tmp_path / "checkpoint-4"), optuna.create_study())
            keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="searches")["Contents"]]
            assert keys == [f"team/sst2/{record['artifact_id']}"]

    def test_refused_credentials_are_named_without_the_secret(self, monkeypatch):
        with s3_server(auth=True) as env:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
            with pytest.raises(ValueError) as err:
                open_artifact_store("s3://searches")
        message = str(err.value)
        assert message.startswith("artifact_store: s3://searches/ at http://127.0.0.1:")
        assert "refused the credentials (InvalidAccessKeyId)" in message
        assert "s3cr3t-value" not in message and "testing" not in message

    def test_a_missing_bucket_is_named(self, monkeypatch):
        with s3_server() as env:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            with pytest.raises(ValueError, match="has no such bucket"):
                open_artifact_store("s3://not-there")

    def test_an_unreachable_endpoint_is_named(self, monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with pytest.raises(ValueError, match="cannot be reached: check AWS_ENDPOINT_URL"):
            open_artifact_store("s3://searches")
