"""A sweep's storage: a local folder or any pyarrow filesystem URI (s3://bucket/prefix, gs://...).

Results are written through pyarrow.fs by `results`; this module moves whole folders (prepared
models, checkpoints) and single files (the Optuna study, reference log-probs) between a node's
local disk and the storage, and keeps a local copy of what a node downloads (one per URI under
`<cache_dir>/storage/`), so a model is fetched once per node.

Endpoints and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, an
instance role, GOOGLE_APPLICATION_CREDENTIALS, ...), never from the URI: a URI with a user name
or a secret in it is refused, so that no credential reaches a result row, a log or the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import UserInputError, first_line

COMPLETE = ".complete"  # written last into a local copy of a folder: the copy is whole


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


# Filesystems (pyarrow `type_name`) whose `move` is an atomic rename that replaces the target.
_ATOMIC_RENAME = frozenset({"local", "hdfs"})


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Write `data` to `path` so that readers see either the previous file or the whole new one."""
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    if fs.type_name not in _ATOMIC_RENAME:
        # Object stores: the object appears only when its single upload completes.
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    temporary = f"{folder}/.{path.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(temporary) as out:
            out.write(data)
        fs.move(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(temporary)
        raise


@dataclass(frozen=True)
class Storage:
    """`uri`: the root as other code should see it (an absolute local path, or `scheme://path`
    with no query string); `fs`/`base`: the pyarrow filesystem and the root's path inside it."""

    uri: str
    fs: pafs.FileSystem
    base: str

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        """A location under the root, as a URI (remote) or an absolute path (local)."""
        return "/".join([self.uri.rstrip("/"), *parts])

    def fs_path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.fs_path(*parts)).type != pafs.FileType.NotFound

    def is_file(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.fs_path(*parts)).type == pafs.FileType.File

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """One small file at `parts`, whole or not at all (`write_atomically`)."""
        write_atomically(self.fs, self.fs_path(*parts), data)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.fs_path(*parts)) as stream:
            return bytes(stream.read())

    def upload_file(self, local: Path, *parts: str) -> None:
        """Copy one local file to `parts` (an object store's put replaces it whole)."""
        target = self.fs_path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(
            str(local), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )

    def download_file(self, local: Path, *parts: str) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = local.with_name(f".{local.name}.download")
        pafs.copy_files(
            self.fs_path(*parts),
            str(staging),
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        staging.replace(local)

    def upload_folder(self, local: Path, *parts: str) -> None:
        """Copy a local folder to `parts` (files are overwritten; hidden staging files skipped)."""
        target = self.fs_path(*parts)
        self.fs.create_dir(target, recursive=True)
        for path in sorted(local.rglob("*")):
            relative = path.relative_to(local)
            if path.is_dir() or any(p.startswith(".") for p in relative.parts):
                continue
            self.upload_file(path, *parts, *relative.parts)

    def _files(self, *parts: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.fs_path(*parts), recursive=True, allow_not_found=True)
        found = [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        return sorted(found, key=lambda i: i.path)

    def folder_version(self, *parts: str) -> str:
        """A fingerprint of the folder at `parts` (its files' paths, sizes and modification times):
        changes when any file is rewritten; "" for a missing or empty folder."""
        files = self._files(*parts)
        if not files:
            return ""
        stamp = "\n".join(f"{i.path}\t{i.size}\t{i.mtime_ns}" for i in files)
        return hashlib.sha256(stamp.encode()).hexdigest()

    def download_folder(self, local: Path, *parts: str) -> None:
        """Copy the folder at `parts` to `local` (written beside it, then renamed into place, with
        the folder's version in `local/.complete`)."""
        source = self.fs_path(*parts)
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local.name}-", dir=local.parent))
        try:
            for info in self._files(*parts):
                target = staging / info.path[len(source) :].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(
                    info.path,
                    str(target),
                    source_filesystem=self.fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
            (staging / COMPLETE).write_text(self.folder_version(*parts))
            if local.exists():
                shutil.rmtree(local)
            staging.rename(local)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _refuse_credentials(text: str) -> None:
    parsed = urllib.parse.urlsplit(text)
    secret_keys = {"access_key", "secret_key", "session_token", "password", "token"}
    if "@" in parsed.netloc or secret_keys & set(urllib.parse.parse_qs(parsed.query)):
        raise UserInputError(
            f"storage: {parsed.scheme}://... holds credentials; give them in the environment "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance role, GOOGLE_APPLICATION_CREDENTIALS)"
        )
    if parsed.query:
        raise UserInputError(
            f"storage: {parsed.scheme}://{parsed.netloc}{parsed.path}?{parsed.query} - options in the URI are "
            "not supported; set the endpoint and region in the environment (AWS_ENDPOINT_URL, AWS_REGION)"
        )


def open_storage(location: str) -> Storage:
    """The Storage of a local folder (`~` and relative paths resolved) or a filesystem URI."""
    if not is_uri(location):
        path = Path(location.removeprefix("file://")).expanduser().resolve()
        return Storage(str(path), pafs.LocalFileSystem(), str(path))
    _refuse_credentials(location)
    try:
        fs, base = pafs.FileSystem.from_uri(location)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserInputError(
            f"storage: {location} is not a usable filesystem URI ({first_line(exc)}); "
            "give a local folder or a URI such as s3://bucket/prefix or gs://bucket/prefix"
        ) from None
    scheme = location.split("://", 1)[0]
    base = base.rstrip("/")
    return Storage(f"{scheme}://{base}", fs, base)


def check_writable(storage: Storage, setting: str = "storage") -> None:
    """Create the root and write, then delete, a small file in it: a missing bucket, a read-only
    folder or refused credentials surface before any work starts. A local root this check had to
    create is removed again, so that a later validation error leaves nothing behind (the sweep
    creates its folder when it starts). `setting`: what the error names (`storage`, `--out`)."""
    probe = storage.fs_path(f".write-check-{os.getpid()}")
    created: list[Path] = []
    if not storage.remote:
        missing = Path(storage.base)
        while not missing.exists() and missing != missing.parent:
            created.append(missing)
            missing = missing.parent
    try:
        storage.fs.create_dir(storage.base, recursive=True)
        with storage.fs.open_output_stream(probe) as out:
            out.write(b"raysimnpo")
        storage.fs.delete_file(probe)
    except (pa.ArrowException, OSError) as exc:
        shown = storage.uri if storage.remote else storage.base
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        reason = reason.replace(storage.base, "").strip(" :'\"") or type(exc).__name__
        raise UserInputError(f"{setting}: {shown} is not writable ({reason})") from None
    finally:
        for folder in created:  # deepest first; only folders this check made, and only if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def local_copy(location: str, cache_dir: str | os.PathLike[str]) -> Path:
    """A local folder for `location`: itself when it is local, else a copy in
    `<cache_dir>/storage/<name>-<hash of the URI>/`, downloaded when missing or when the remote
    folder changed since (one listing per call: a retried trial's new checkpoint is fetched anew)."""
    if not is_uri(location):
        return Path(location.removeprefix("file://")).expanduser()
    key = hashlib.sha256(location.encode()).hexdigest()[:20]
    name = location.rstrip("/").rsplit("/", 1)[-1]
    target = Path(cache_dir).expanduser() / "storage" / f"{name}-{key}"
    scheme, rest = location.split("://", 1)
    bucket, _, inside = rest.partition("/")
    root = open_storage(f"{scheme}://{bucket}")
    parts = [inside.strip("/")] if inside.strip("/") else []
    version = root.folder_version(*parts)
    if not version:
        raise FileNotFoundError(f"{location}: no such folder, or it is empty")
    marker = target / COMPLETE
    if not marker.is_file() or marker.read_text() != version:
        root.download_folder(target, *parts)
    return target


def exists(location: str) -> bool:
    """Whether a file or folder exists at a local path or a filesystem URI."""
    if not is_uri(location):
        return Path(location.removeprefix("file://")).expanduser().exists()
    fs, path = pafs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound
