"""`raysimnpo.results.storage`: local folders and filesystem URIs (an S3 server on loopback: moto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysimnpo.errors import UserInputError
from raysimnpo.results.storage import COMPLETE, check_writable, exists, is_uri, local_copy, open_storage


def make_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (root / ".staging-file").write_text("not uploaded")
    return root


def test_local_storage_is_the_resolved_folder(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "runs" / ".." / "runs"))
    assert not storage.remote and storage.uri == str((tmp_path / "runs").resolve())
    assert storage.join("tofu", "results") == f"{tmp_path / 'runs'}/tofu/results"
    check_writable(storage)  # writes a probe, and removes the folder it had to create for it
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()
    check_writable(storage)  # an existing folder stays, empty
    assert list((tmp_path / "runs").iterdir()) == []
    assert open_storage(f"file://{tmp_path}").uri == str(tmp_path)
    assert local_copy(str(tmp_path), tmp_path / "cache") == tmp_path
    assert not is_uri(f"file://{tmp_path}") and is_uri("s3://bucket/x")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://AKIAXXXX:secret@bucket/runs", "s3://... holds credentials"),
        ("s3://bucket/runs?secret_key=abc", "s3://... holds credentials"),
        ("s3://bucket/runs?region=eu-west-1", "options in the URI are not supported"),
        ("nosuchfs://bucket/runs", "storage: nosuchfs://bucket/runs is not a usable filesystem URI"),
    ],
)
def test_bad_uris_are_refused_without_echoing_secrets(uri: str, expected: str) -> None:
    with pytest.raises(UserInputError) as info:
        open_storage(uri)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert "AKIAXXXX" not in message and "abc" not in message


def test_unwritable_local_folder_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match=r"^storage: /proc/raysimnpo-x is not writable \("):
        check_writable(open_storage("/proc/raysimnpo-x"))


def test_missing_bucket_is_a_user_error(s3_server: str) -> None:
    with pytest.raises(UserInputError, match=r"^storage: s3://raysimnpo-no-such-bucket/runs is not writable"):
        check_writable(open_storage("s3://raysimnpo-no-such-bucket/runs"))


def test_folders_and_files_round_trip_through_s3(tmp_path: Path, s3_bucket: str) -> None:
    storage = open_storage(f"{s3_bucket}/runs/")
    assert storage.remote and storage.uri == f"{s3_bucket}/runs"
    check_writable(storage)
    source = make_folder(tmp_path / "model")
    storage.upload_folder(source, "prepared", "original-abc", "model")
    assert storage.is_file("prepared", "original-abc", "model", "sub", "weights.bin")
    assert not storage.exists("prepared", "original-abc", "model", ".staging-file")
    assert exists(f"{s3_bucket}/runs/prepared/original-abc/model/config.json")
    assert not exists(f"{s3_bucket}/runs/prepared/retrain-abc")

    cache = tmp_path / "cache"
    copy = local_copy(f"{s3_bucket}/runs/prepared/original-abc/model", cache)
    assert copy.parent == cache / "storage" and (copy / COMPLETE).is_file()
    assert (copy / "config.json").read_text() == '{"a": 1}'
    assert (copy / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 4
    assert not (copy / ".staging-file").exists()
    # A whole copy of an unchanged folder is reused (not fetched again); an incomplete one, or one
    # of a folder rewritten since (a retried trial's checkpoint), is fetched again.
    uri = f"{s3_bucket}/runs/prepared/original-abc/model"
    (copy / "config.json").write_text("local edit")
    assert local_copy(uri, cache) == copy and (copy / "config.json").read_text() == "local edit"
    (copy / COMPLETE).unlink()
    assert (local_copy(uri, cache) / "config.json").read_text() == '{"a": 1}'
    (source / "config.json").write_text('{"a": 2, "retried": true}')
    storage.upload_folder(source, "prepared", "original-abc", "model")
    assert (local_copy(uri, cache) / "config.json").read_text() == '{"a": 2, "retried": true}'
    with pytest.raises(FileNotFoundError, match="no such folder"):
        local_copy(f"{s3_bucket}/runs/prepared/missing", cache)

    single = tmp_path / "study.sqlite"
    single.write_bytes(b"SQLite format 3\x00" + b"\x01" * 100)
    storage.upload_file(single, "tofu", "optuna.sqlite")
    back = tmp_path / "back" / "optuna.sqlite"
    storage.download_file(back, "tofu", "optuna.sqlite")
    assert back.read_bytes() == single.read_bytes()


def test_a_small_file_is_written_whole_and_replaced_whole(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "runs"))
    storage.write_bytes(b'{"a": 1}', "sweep", "sweep.json")
    storage.write_bytes(b'{"a": 2}', "sweep", "sweep.json")  # renamed over the first: no staging file left
    assert [p.name for p in (tmp_path / "runs" / "sweep").iterdir()] == ["sweep.json"]
    assert storage.read_bytes("sweep", "sweep.json") == b'{"a": 2}'
