"""The ``file`` writer: daily JSONL files, each message once, even across ``kill -9``.

A batch is appended to ``messages_<queue type>_<YYYY-MM-DD>.jsonl`` (UTC
date of the write) in ``file_path``, one message per line, and fsynced
before it counts as written. A file is not a transaction, so the writer
keeps a marker in Redis (`syncd_messages.keys.marker_key`, one field per
consumer) set *before* each append: the batch id, the file and the offset
the batch starts at. A batch that comes back after a crash (it is still in
the writer's processing list) is checked against its marker:

- no marker for this batch: the append never started; append it;
- the file holds the whole batch at the offset: it was written (the crash
  came before the ack); nothing to append;
- the file ends with a part of it: the append was cut short; append the
  rest, so the batch is complete and no line is written twice.

Every batch, recovered or not, is checked against its marker while the
writer holds an exclusive ``flock`` on the file it is about to append to,
until its append is done: a replica paused before its append (SIGSTOP, a
long GC pause) whose batch another replica reclaimed and wrote meanwhile
finds, when it wakes, that batch's marker and appends nothing, and two
writers of one batch never both pass the check. The lock also keeps
replicas sharing one directory from interleaving, and the offset in the
marker true.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

import syncd
from syncd_messages.keys import marker_key
from syncd_messages.written import Written

#: How long an append waits for another process's lock on the same file.
LOCK_TIMEOUT = 10.0


class FileUnavailable(syncd.TransientError):
    """The directory or file cannot be written right now (full disk, locked, permissions)."""


def file_name(queue_type: str, when: datetime) -> str:
    return f"messages_{queue_type}_{when.astimezone(UTC):%Y-%m-%d}.jsonl"


@attrs.define(eq=False)
class FileWriter:
    """Appends batches to daily files under ``directory``."""

    ctx: syncd.PluginContext
    name: str = "file"
    limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(4))

    @property
    def directory(self) -> Path:
        return Path(self.ctx.config.file_path).absolute()

    async def prepare(self) -> None:
        await self._thread(lambda: self.directory.mkdir(parents=True, exist_ok=True))

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        yield

    async def write(
        self, queue_type: str, source: str, batch: syncd.Batch, messages: list[bytes]
    ) -> Written:
        data = b"\n".join(messages) + b"\n"
        key = marker_key(source)
        path = self.directory / file_name(queue_type, datetime.now(UTC))
        fd, offset, created = await self._thread(_open_locked, path)
        try:
            raw = await self.ctx.redis.run(lambda client: client.hget(key, batch.consumer))
            marker = json.loads(raw) if raw else None
            if marker and marker.get("batch") == batch.id:
                # Begun before: by this process before a crash, or by another
                # replica that reclaimed the batch while this one was paused.
                done = await self._thread(_complete, marker, data,
                                          fd if marker["file"] == str(path) else None)
                if done is not None:
                    self.ctx.log.info(
                        "file batch checked after a restart" if batch.recovered else
                        "file batch was written by another replica while this one was paused",
                        extra={"batch": batch.id, "file": marker["file"], "lines_found": done,
                               "lines_appended": len(messages) - done})
                    return Written(len(messages) - done, done)
                self.ctx.log.error(
                    "file no longer matches the marker of an interrupted append "
                    "(rotated, truncated, or written by another process without the lock); "
                    "appending the batch again", extra={"batch": batch.id, "file": marker["file"]})
                offset = await self._thread(lambda: os.fstat(fd).st_size)
            marker = json.dumps({"batch": batch.id, "file": str(path), "offset": offset,
                                 "length": len(data)})
            await self.ctx.redis.run(lambda client: client.hset(key, batch.consumer, marker))
            await self._thread(_append, fd, data, path if created else None)
        finally:
            os.close(fd)  # releases the flock too
        return Written(len(messages))

    async def _thread(self, fn: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except OSError as exc:
            raise FileUnavailable(f"{self.directory}: {exc}") from exc


def _lock(fd: int, path: Path) -> None:
    """flock(LOCK_EX), bounded: another process holds it only for one append."""
    give_up = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > give_up:
                raise OSError(f"{path} stayed locked by another process for "
                              f"{LOCK_TIMEOUT:g} s") from None
            time.sleep(0.01)


def _open_locked(path: Path) -> tuple[int, int, bool]:
    """In a thread: open ``path`` for appending, locked; ``(fd, size, created)``."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock(fd, path)
        return fd, os.fstat(fd).st_size, created
    except BaseException:
        os.close(fd)
        raise


def _append(fd: int, data: bytes, created: Path | None) -> None:
    """In a thread: write all of ``data`` and fsync; a new file's directory entry too."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)
    if created is not None:
        _fsync_dir(created.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete(marker: dict[str, Any], data: bytes, locked: int | None = None) -> int | None:
    """In a thread: finish the batch ``data`` the marker says starts at its offset.

    Returns how many of its lines were found in the file already (all of
    them: nothing written now), or None when the file does not hold a
    prefix of the batch there (the caller appends it afresh). ``locked`` is
    the file's descriptor when the caller holds its lock already.
    """
    path, offset = Path(marker["file"]), int(marker["offset"])
    if locked is not None:
        return _complete_locked(locked, offset, data)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        _lock(fd, path)
        return _complete_locked(fd, offset, data)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _complete_locked(fd: int, offset: int, data: bytes) -> int | None:
    size = os.fstat(fd).st_size
    if size < offset:
        return None
    found = os.pread(fd, min(len(data), size - offset), offset)
    if found == data:
        os.fsync(fd)  # written before the crash, maybe not yet synced
        return data.count(b"\n")
    if size == offset + len(found) and data.startswith(found):
        _append(fd, data[len(found):], None)
        return found.count(b"\n")
    return None
