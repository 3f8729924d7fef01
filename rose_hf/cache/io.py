"""Files that are never seen half-written, and disk errors that say what to do."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from ..errors import CacheWriteError


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) so that a reader sees the old file or the whole new one, never a partial one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with disk_errors(path):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def atomic_write_json(path: str, payload: Any) -> None:
    """Write JSON so that a reader sees the old file or the whole new one, never a partial one."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(path: str) -> Any:
    with open(path) as handle:
        return json.load(handle)


class disk_errors:
    """Turn a full disk or a read-only folder into an error that says what to do; completed work stays valid."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, OSError) and not isinstance(exc, CacheWriteError):
            if exc.errno == errno.ENOSPC:
                raise CacheWriteError(
                    f"Disk full while writing {self.path}. Every chunk finished before this one is kept: free space "
                    "(or point `output_dir` elsewhere) and run again to resume where it stopped."
                ) from exc
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise CacheWriteError(
                    f"Cannot write {self.path} ({os.strerror(exc.errno)}): choose a writable `output_dir`."
                ) from exc
        return False


def jsonable(value: Any) -> Any:
    """Round-trip through JSON so that saved and current run descriptions compare like for like."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
