"""A storage backend on a local directory: the embedded default, for development,
single-node installs and tests.

Layout, one directory per bucket under ``root``::

    <bucket>/.partial/<uuid>/          an object being written (writer, copy): invisible
    <bucket>/.objects/<uuid>/data      a committed object's bytes, never modified again
    <bucket>/.objects/<uuid>/meta.json its content type and metadata
    <bucket>/<key>                     a relative symlink to ``.objects/<uuid>``

Why a symlink per key rather than the file itself: the data and its metadata become
visible together with one atomic operation, and that operation has both flavours
we need. ``os.replace`` of a symlink replaces atomically (``put``, ``Writer.commit``);
``os.symlink`` fails if the key exists, which makes ``if_absent`` and copy commits
race-safe without locks. The object directory's name doubles as the version marker.
A copy hard-links the source's ``data`` into a new object directory (content is never
modified in place, so sharing the inode is safe, and deleting the source leaves the
copy intact) with its own ``meta.json``.

Blocking file I/O runs in worker threads (``asyncio.to_thread``); writes are batched
so that a stream of small chunks does not pay one thread hop per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import structlog

from fileshare.storage.base import ObjectExists, ObjectInfo, ObjectNotFound, StorageError
from fileshare.storage.encryption import Encryption

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Writes are batched up to this size before one thread hop writes them.
WRITE_BATCH = 1024 * 1024
#: Reads are streamed in chunks of this size.
READ_CHUNK = 256 * 1024
#: Leftovers of crashed writers older than this are removed at start-up. Younger ones
#: may belong to another process sharing the directory.
PARTIAL_MAX_AGE = 24 * 3600.0

_PARTIAL = ".partial"
_OBJECTS = ".objects"
_DATA = "data"
_META = "meta.json"
_DEFAULT_TYPE = "application/octet-stream"


class LocalStorage:
    """Objects in ``root/<bucket>/``. The ``buckets`` are created if missing and
    checked by ``ping``; other existing bucket directories work too."""

    def __init__(self, root: Path, *, buckets: tuple[str, ...] = ()) -> None:
        self.root = Path(root).absolute()
        self.buckets = buckets
        # Start-up, not a hot path: plain blocking calls are fine here.
        for bucket in buckets:
            path = self.root / _check_bucket(bucket)
            try:
                for sub in (_PARTIAL, _OBJECTS):
                    (path / sub).mkdir(parents=True, exist_ok=True)
                _sweep_partials(path / _PARTIAL)
            except OSError as exc:
                raise StorageError(f"cannot create bucket directory {path}: {exc}") from exc

    # --- Storage ---------------------------------------------------------------------

    async def open_writer(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str = _DEFAULT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> LocalWriter:
        target = self._target(bucket, key)
        meta = _meta(content_type, metadata)
        staged = await _run(target.stage, what=f"open writer for {bucket}/{key}")
        return LocalWriter(target, staged, meta)

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = _DEFAULT_TYPE,
        metadata: dict[str, str] | None = None,
        if_absent: bool = False,
    ) -> ObjectInfo:
        target = self._target(bucket, key)
        meta = _meta(content_type, metadata)

        def put() -> ObjectInfo:
            staged = target.stage()
            try:
                with staged.data_path.open("wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return target.publish(staged, meta, len(data), replace=not if_absent)
            finally:
                staged.discard()

        return await _run(put, what=f"put {bucket}/{key}")

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        target = self._target(bucket, key)
        return await _run(target.head, what=f"head {bucket}/{key}")

    async def read(
        self,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        version: str | None = None,
    ) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise StorageError(f"invalid range {start}-{end}")
        target = self._target(bucket, key)
        what = f"read {bucket}/{key}"
        if version is not None and (await _run(target.head, what=what)).version != version:
            # Every version is a directory of its own, never rewritten: the one found now
            # is the one read below, unless a replace lands in between (fileshare's own
            # keys are never replaced).
            raise StorageError(f"{what}: the object is not the version asked for")
        f = await _run(target.open_data, what=what)
        try:
            size = os.fstat(f.fileno()).st_size
            if start >= size and (start > 0 or end is not None):
                # As S3: any range of an empty object, or from past the end, is invalid.
                raise StorageError(f"{what}: range not satisfiable ({size} bytes)")
            if start:
                f.seek(start)  # no I/O: only moves the offset
            remaining = size - start if end is None else min(end, size - 1) - start + 1
            while remaining > 0:
                chunk = await _run(f.read, min(READ_CHUNK, remaining), what=what)
                if not chunk:
                    break  # cannot shrink (immutable), but never loop forever
                remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def begin_copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        size: int,
        content_type: str = _DEFAULT_TYPE,
        metadata: dict[str, str] | None = None,
        src_version: str | None = None,
    ) -> LocalPendingCopy:
        source = self._target(src_bucket, src_key)
        target = self._target(dst_bucket, dst_key)
        meta = _meta(content_type, metadata)

        def prepare() -> _Staged:
            src_dir = source.resolve()
            if src_version is not None and src_dir.name != src_version:
                # An object's version is the name of its directory.
                raise StorageError(
                    f"copy {src_bucket}/{src_key}: the source is no longer the version written"
                )
            src_data = src_dir / _DATA
            staged = target.stage(empty=False)
            try:
                try:
                    os.link(src_data, staged.data_path)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    shutil.copyfile(src_data, staged.data_path)  # another filesystem
                actual = staged.data_path.stat().st_size
                if actual != size:
                    raise StorageError(
                        f"copy {src_bucket}/{src_key}: source has {actual} bytes, not {size}"
                    )
            except BaseException:
                staged.discard()
                raise
            return staged

        what = f"copy {src_bucket}/{src_key} to {dst_bucket}/{dst_key}"
        staged = await _run(prepare, what=what)
        return LocalPendingCopy(target, staged, meta, size, what)

    async def delete(self, bucket: str, key: str) -> None:
        target = self._target(bucket, key)
        await _run(target.delete, what=f"delete {bucket}/{key}")

    async def list_keys(self, bucket: str, prefix: str = "") -> AsyncIterator[str]:
        bucket_dir = self._bucket_dir(bucket)
        keys = await _run(_list_keys, bucket_dir, prefix, what=f"list {bucket}")
        for key in keys:
            yield key

    async def list_stale(self, bucket: str, prefix: str, before: datetime) -> AsyncIterator[str]:
        bucket_dir = self._bucket_dir(bucket)
        cutoff = before.timestamp()

        def stale() -> list[str]:
            # A key is a link made when its object was published: the link's own time.
            return [
                key for key in _list_keys(bucket_dir, prefix) if _mtime(bucket_dir / key) < cutoff
            ]

        for key in await _run(stale, what=f"list {bucket}"):
            yield key

    async def abort_stale_uploads(self, bucket: str, prefix: str, before: datetime) -> int:
        """Partial writes have no key yet: every one older than ``before`` goes, whatever
        ``prefix`` says (a write in progress keeps its data file's time fresh)."""
        partial = self._bucket_dir(bucket) / _PARTIAL
        return await _run(
            _sweep_partials, partial, before.timestamp(), what=f"sweep {bucket} partial writes"
        )

    async def ping(self) -> None:
        def check() -> None:
            for bucket in self.buckets:
                path = self.root / bucket
                if not (path / _OBJECTS).is_dir() or not os.access(path, os.W_OK | os.X_OK):
                    raise StorageError(f"bucket directory {path} is missing or read-only")

        await _run(check, what="ping")

    async def verify_encryption(self) -> str:
        """Files are written as they are: encryption at rest is the volume's (LUKS, an
        encrypted cloud disk or PersistentVolume), which fileshare cannot see from here.
        The start-up log says so."""
        return Encryption().describe("local")

    async def close(self) -> None:
        """Nothing to release."""

    # --- helpers ---------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / _check_bucket(bucket)

    def _target(self, bucket: str, key: str) -> _Target:
        return _Target(self._bucket_dir(bucket), bucket, _check_key(key))


class LocalWriter:
    """Streams into ``<bucket>/.partial/<uuid>/data``; ``commit`` publishes it."""

    def __init__(self, target: _Target, staged: _Staged, meta: dict[str, Any]) -> None:
        self._target = target
        self._staged: _Staged | None = staged
        self._meta = meta
        # Chunks are kept by reference and written with one writelines per batch.
        self._buf: list[bytes] = []
        self._buffered = 0
        self._flushed = False
        self._size = 0
        self._failed = False
        self._sealed = False
        self._committed = False
        self._what = f"write {target.bucket}/{target.key}"

    async def write(self, chunk: bytes) -> None:
        self._check_open()
        if chunk:
            self._buf.append(chunk)  # bytes are immutable: keeping a reference is safe
            self._buffered += len(chunk)
            self._size += len(chunk)
        if self._buffered >= WRITE_BATCH:
            await self._flush()

    def buffered(self) -> bytes | None:
        if self._flushed or self._sealed or self._staged is None:
            return None
        return b"".join(self._buf)

    async def seal(self) -> None:
        self._check_open()
        staged = self._staged
        assert staged is not None
        data, self._buf, self._buffered = self._buf, [], 0
        try:
            await _run(_write_out, staged, data, what=self._what)
        except BaseException:
            self._failed = True
            raise
        self._sealed = True

    async def commit(self) -> ObjectInfo:
        if not self._sealed:
            self._check_open()
        elif self._staged is None or self._failed or self._committed:
            raise StorageError(f"{self._what}: the writer is closed")
        staged = self._staged
        assert staged is not None
        data, self._buf, self._buffered = self._buf, [], 0

        def finish() -> ObjectInfo:
            if not self._sealed:
                _write_out(staged, data)
            return self._target.publish(staged, self._meta, self._size, replace=True)

        try:
            info = await _run(finish, what=self._what)
        except BaseException:
            self._failed = True
            raise
        self._committed = True
        self._staged = None
        return info

    async def abort(self) -> None:
        staged, self._staged = self._staged, None
        self._buf, self._buffered = [], 0
        if staged is None:
            return
        try:
            await asyncio.to_thread(staged.discard)
        except Exception as exc:  # never raises; a leftover is swept at start-up
            log.warning("storage.abort_failed", what=self._what, error=str(exc))

    def _check_open(self) -> None:
        if self._staged is None or self._failed or self._committed or self._sealed:
            raise StorageError(f"{self._what}: the writer is closed")

    async def _flush(self) -> None:
        staged = self._staged
        assert staged is not None
        data, self._buf, self._buffered = self._buf, [], 0
        self._flushed = True

        def append() -> None:
            staged.open_file().writelines(data)

        try:
            await _run(append, what=self._what)
        except BaseException:
            self._failed = True
            raise


def _write_out(staged: _Staged, data: list[bytes]) -> None:
    """The last writes, made durable: after it, publishing is only a rename."""
    f = staged.open_file()
    f.writelines(data)
    f.flush()
    os.fsync(f.fileno())
    staged.close_file()


class LocalPendingCopy:
    """A hard link (or copy) of the source in ``.partial``; ``commit`` publishes it."""

    def __init__(
        self, target: _Target, staged: _Staged, meta: dict[str, Any], size: int, what: str
    ) -> None:
        self._target = target
        self._staged: _Staged | None = staged
        self._meta = meta
        self._size = size
        self._what = what

    async def commit(self) -> ObjectInfo:
        staged = self._staged
        if staged is None:
            raise StorageError(f"{self._what}: the copy is closed")

        def finish() -> ObjectInfo:
            try:
                return self._target.publish(staged, self._meta, self._size, replace=False)
            finally:
                staged.discard()

        try:
            return await _run(finish, what=self._what)
        finally:
            self._staged = None

    async def abort(self) -> None:
        staged, self._staged = self._staged, None
        if staged is None:
            return
        try:
            await asyncio.to_thread(staged.discard)
        except Exception as exc:
            log.warning("storage.abort_failed", what=self._what, error=str(exc))


# --- filesystem operations (run in worker threads) -------------------------------------


class _Staged:
    """An object directory under ``.partial`` that nobody else can see."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data_path = path / _DATA
        self._file: BinaryIO | None = None

    def open_file(self) -> BinaryIO:
        if self._file is None:
            self._file = self.data_path.open("ab")
        return self._file

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close_file()
        shutil.rmtree(self.path, ignore_errors=True)


class _Target:
    """One key of one bucket, and the filesystem steps on it."""

    def __init__(self, bucket_dir: Path, bucket: str, key: str) -> None:
        self.bucket_dir = bucket_dir
        self.bucket = bucket
        self.key = key
        self.link = bucket_dir.joinpath(*key.split("/"))

    def stage(self, *, empty: bool = True) -> _Staged:
        """A new invisible object directory, with an empty ``data`` file unless
        ``empty`` is false (the caller then puts ``data`` there itself)."""
        self._check_bucket()
        path = self.bucket_dir / _PARTIAL / uuid.uuid4().hex
        path.mkdir(parents=True)
        if empty:
            path.joinpath(_DATA).touch()
        return _Staged(path)

    def publish(
        self, staged: _Staged, meta: dict[str, Any], size: int, *, replace: bool
    ) -> ObjectInfo:
        """Move ``staged`` to ``.objects`` and point the key at it; with ``replace``
        false, raise ``ObjectExists`` if the key is taken (nothing is changed then)."""
        staged.close_file()
        with (staged.path / _META).open("w", encoding="utf-8") as f:
            json.dump(meta, f)
        version = staged.path.name
        obj_dir = self.bucket_dir / _OBJECTS / version
        os.rename(staged.path, obj_dir)
        try:
            self._make_parents()
            link_target = os.path.relpath(obj_dir, self.link.parent)
            if replace:
                previous = self._read_link()
                tmp_link = self.bucket_dir / _PARTIAL / f"{version}.link"
                os.symlink(link_target, tmp_link)
                try:
                    os.replace(tmp_link, self.link)
                except BaseException:
                    tmp_link.unlink(missing_ok=True)
                    raise
                if previous is not None and previous.name != version:
                    # Readers that already opened the old data keep reading it.
                    shutil.rmtree(previous, ignore_errors=True)
            else:
                try:
                    os.symlink(link_target, self.link)
                except FileExistsError:
                    raise ObjectExists(f"{self.bucket}/{self.key} already exists") from None
        except BaseException:
            shutil.rmtree(obj_dir, ignore_errors=True)
            raise
        return ObjectInfo(
            key=self.key,
            size=size,
            version=version,
            content_type=meta["content_type"],
            metadata=dict(meta["metadata"]),
        )

    def resolve(self) -> Path:
        """The object directory the key points at, or ``ObjectNotFound``."""
        self._check_bucket()
        obj_dir = self._read_link()
        if obj_dir is None:
            raise ObjectNotFound(f"{self.bucket}/{self.key} does not exist")
        return obj_dir

    def head(self) -> ObjectInfo:
        # A concurrent replace may remove the directory we just resolved: look again.
        for attempt in range(3):
            obj_dir = self.resolve()
            try:
                size = (obj_dir / _DATA).stat().st_size
                with (obj_dir / _META).open(encoding="utf-8") as f:
                    meta = json.load(f)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue
            return ObjectInfo(
                key=self.key,
                size=size,
                version=obj_dir.name,
                content_type=str(meta.get("content_type", _DEFAULT_TYPE)),
                metadata={str(k): str(v) for k, v in meta.get("metadata", {}).items()},
            )
        raise AssertionError("unreachable")

    def open_data(self) -> BinaryIO:
        for attempt in range(3):
            try:
                return (self.resolve() / _DATA).open("rb")
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def delete(self) -> None:
        self._check_bucket()
        obj_dir = self._read_link()
        if obj_dir is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        shutil.rmtree(obj_dir, ignore_errors=True)

    def _check_bucket(self) -> None:
        if not (self.bucket_dir / _OBJECTS).is_dir():
            raise ObjectNotFound(f"bucket {self.bucket} does not exist")

    def _read_link(self) -> Path | None:
        try:
            target = os.readlink(self.link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTDIR):
                # Not a symlink, or a parent is a key: not an object of ours.
                raise StorageError(f"{self.bucket}/{self.key} collides with another key") from exc
            raise
        obj_dir = (self.link.parent / target).resolve(strict=False)
        objects = (self.bucket_dir / _OBJECTS).resolve(strict=False)
        if obj_dir.parent != objects:
            raise StorageError(f"{self.bucket}/{self.key} points outside its bucket")
        return obj_dir

    def _make_parents(self) -> None:
        """Create the key's parent directories, refusing to descend through a key (a
        symlink): ``a`` and ``a/b`` cannot both be keys here."""
        path = self.bucket_dir
        for part in self.key.split("/")[:-1]:
            path = path / part
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            if path.is_symlink() or not path.is_dir():
                raise StorageError(f"{self.bucket}/{self.key} collides with another key")


def _list_keys(bucket_dir: Path, prefix: str) -> list[str]:
    if not (bucket_dir / _OBJECTS).is_dir():
        raise ObjectNotFound(f"bucket {bucket_dir.name} does not exist")
    # Start at the deepest directory the prefix names, rather than walking everything.
    dir_parts = prefix.split("/")[:-1]
    if any(p in ("", ".", "..") or "\0" in p for p in dir_parts) or (
        dir_parts and dir_parts[0].startswith(".")
    ):
        return []
    start = bucket_dir.joinpath(*dir_parts)
    base = "".join(p + "/" for p in dir_parts)

    def walk(path: Path, rel: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not rel and entry.name.startswith("."):
                continue  # .partial, .objects
            name = rel + entry.name
            if entry.is_symlink():
                if name.startswith(prefix):
                    yield name
            elif entry.is_dir(follow_symlinks=False) and (
                name.startswith(prefix) or prefix.startswith(name + "/")
            ):
                yield from walk(Path(entry.path), name + "/")

    return sorted(walk(start, base))


def _sweep_partials(partial: Path, cutoff: float | None = None) -> int:
    """Remove partial writes last touched before ``cutoff`` (default: ``PARTIAL_MAX_AGE``
    ago); how many."""
    if cutoff is None:
        cutoff = time.time() - PARTIAL_MAX_AGE
    removed = 0
    for entry in os.scandir(partial):
        with contextlib.suppress(OSError):
            if _mtime(Path(entry.path)) < cutoff:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed += 1
    return removed


def _mtime(path: Path) -> float:
    """The newest time of ``path`` itself (a link is not followed) and, for a partial
    write's directory, of its data file: appends do not touch the directory."""
    newest = path.lstat().st_mtime
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            newest = max(newest, (path / _DATA).stat().st_mtime)
    return newest


# --- validation and error translation ------------------------------------------------


def _check_bucket(bucket: str) -> str:
    if not bucket or bucket.startswith(".") or "/" in bucket or "\\" in bucket or "\0" in bucket:
        raise StorageError(f"invalid bucket name {bucket!r}")
    return bucket


def _check_key(key: str) -> str:
    """Refuse any key that could leave its bucket directory or reach our own hidden
    entries (``.partial``, ``.objects``). Keys come from fileshare, but a path is
    never trusted."""
    parts = key.split("/")
    if (
        not key
        or "\0" in key
        or key.startswith("/")
        or parts[0].startswith(".")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise StorageError(f"invalid key {key!r}")
    return key


def _meta(content_type: str, metadata: dict[str, str] | None) -> dict[str, Any]:
    return {"content_type": content_type, "metadata": dict(metadata or {})}


async def _run(fn: Callable[..., T], *args: Any, what: str) -> T:
    """Run blocking ``fn`` in a worker thread; OS errors become ``StorageError``."""
    try:
        return await asyncio.to_thread(fn, *args)
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"{what}: not found") from exc
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a damaged meta.json
        raise StorageError(f"{what}: {type(exc).__name__}") from exc
