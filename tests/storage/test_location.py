"""The storage setting: an absolute path or an object-store URL; anything else refused at start with one line.
Keys are confined under the root/prefix whatever a spec or a manifest says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.errors import StorageError, StorageLocationError
from jobs.settings import ClientSettings, WorkerSettings
from jobs.storage.factory import open_storage
from jobs.storage.location import default_location, parse_location
from jobs.storage.names import job_key, validate_key
from tests.conftest import ROOT


@pytest.mark.parametrize(("given", "expected"), [
    ("/srv/traind", ("local", "/srv/traind")),
    ("/srv/traind/", ("local", "/srv/traind")),
    ("file:///srv/traind", ("local", "/srv/traind")),
    ("s3://ml-checkpoints/traind/", ("object", "s3://ml-checkpoints/traind")),
    ("s3://ml-checkpoints", ("object", "s3://ml-checkpoints")),
    ("S3://ml-checkpoints//a//b", ("object", "s3://ml-checkpoints/a/b")),
    ("s3a://ml-checkpoints/x", ("object", "s3a://ml-checkpoints/x")),
])
def test_accepted_locations(given: str, expected: tuple[str, str]) -> None:
    assert parse_location(given) == expected


@pytest.mark.parametrize(("given", "message"), [
    ("traind-data", "storage location 'traind-data' is a relative path; expected an absolute path (e.g. "),
    ("./x", "storage location './x' is a relative path"),
    ("s3:/bucket/prefix", "storage location 's3:/bucket/prefix' is a relative path"),
    ("ftp://host/dir", "storage location 'ftp://host/dir': unsupported scheme 'ftp'; expected an absolute path or one "
                       "of s3://, gs://, az://"),
    ("http://bucket/x", "unsupported scheme 'http'"),
    ("s3://AKIA:secret@bucket/x", "storage location 's3://***@bucket/x': credentials and options do not belong in "
                                  "the URL; use the standard environment"),
    ("s3://bucket/x?endpoint=evil", "credentials and options do not belong in the URL"),
    ("s3://bucket/../other", "prefix part '..' is not a plain name"),
    ("s3://bucket/.hidden/x", "prefix part '.hidden' is not a plain name"),
    ("s3://", "expected s3://bucket[/prefix]"),
    ("s3://Bad_Bucket!/x", "expected s3://bucket[/prefix]"),
    ("gs://bucket/x", "storage location 'gs://bucket/x': scheme 'gs' is not available here (Please install gcsfs"),
    ("", "storage location '' is empty"),
])
def test_refused_locations(given: str, message: str) -> None:
    with pytest.raises(StorageLocationError) as ei:
        parse_location(given)
    assert message in str(ei.value)
    assert "\n" not in str(ei.value) and "secret" not in str(ei.value)


def test_default_is_absolute_under_the_user_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not ./traind-data: every process of the user names the same place whatever its working directory."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_location() == str(tmp_path / "data" / "traind")
    assert ClientSettings().storage_dir == str(tmp_path / "data" / "traind")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_location() == str(Path.home() / ".local" / "share" / "traind")


def test_settings_refuse_relative_and_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIND_STORAGE_DIR", "s3:/bucket/prefix")  # the mistyped URL became a local dir before
    with pytest.raises(ValueError, match="is a relative path"):
        WorkerSettings()
    monkeypatch.setenv("TRAIND_STORAGE_DIR", "s3://bucket/prefix")
    assert WorkerSettings().storage_dir == "s3://bucket/prefix"


def test_client_refuses_a_relative_storage() -> None:
    from jobs.client import Client

    with pytest.raises(StorageLocationError, match="relative path"):
        Client(redis_url="redis://127.0.0.1:1/0", storage="traind-data")


@pytest.mark.parametrize("cmd", [["worker"], ["supervise"], ["submit", "examples/regression.yaml"], ["up"]])
def test_cli_refuses_at_start_with_one_line(cmd: list[str], tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "TRAIND_STORAGE_DIR": "relative/dir"}
    res = subprocess.run([sys.executable, "-m", "daemon.cli", *cmd], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "storage location 'relative/dir' is a relative path" in lines[0]


@pytest.mark.parametrize("key", ["/etc/passwd", "../x", "jobs/../../x", "jobs/a/../../b", "", "a//b", "a/./b",
                                 ".hidden", "jobs/a\\b", "jobs/a\nb", "jobs/a/", None, 5])
def test_keys_are_confined(key: object) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        validate_key(key)


@pytest.mark.parametrize("file", ["../other/ckpt/e1.npz", "/abs/e1.npz", "ckpt/../../x.npz", "ckpt//x.npz"])
def test_manifest_file_cannot_leave_the_job(file: str) -> None:
    with pytest.raises(StorageError):
        job_key("job1", file)


def test_object_keys_are_prefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    st = open_storage("s3://bucket/team/traind")
    assert st._p("jobs/j1/ckpt/e1.npz") == "bucket/team/traind/jobs/j1/ckpt/e1.npz"  # type: ignore[attr-defined]
    with pytest.raises(StorageError):
        st._p("../../other-team/x")  # type: ignore[attr-defined]
