"""Atomic file writes: a crash or SIGKILL mid-write never leaves a truncated file.

Write to a temporary file in the same directory, flush and fsync it, then ``os.replace``
it over the target (atomic on POSIX and Windows when both are on one file system).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _default_mode() -> int:
    """The mode a plain open() would give a new file (0o666 minus the umask); mkstemp's
    temporary files are 0o600, which would leave reports unreadable to others."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


# ----------------------------------------------------------------------------- parts

PARTS_FORMAT = "sgem-parts-v1"


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def split_into_parts(path: str | os.PathLike, max_bytes: int) -> Path:
    """Split a file into ``<name>.partNN`` files of at most ``max_bytes`` each and write
    ``<name>.parts.json`` (the whole file's and each part's size and sha256) beside it.

    For carrying a file through a channel that limits file sizes; :func:`join_parts`
    rebuilds and verifies it. Returns the manifest's path."""
    path = Path(path)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    data = path.read_bytes()
    parts = []
    for n, start in enumerate(range(0, max(len(data), 1), max_bytes)):
        chunk = data[start:start + max_bytes]
        part = path.with_name(f"{path.name}.part{n:02d}")
        atomic_write(part, lambda fh, c=chunk: fh.write(c), binary=True)
        parts.append({"file": part.name, "bytes": len(chunk), "sha256": _sha256(chunk)})
    manifest = {"format": PARTS_FORMAT, "file": path.name, "bytes": len(data), "sha256": _sha256(data),
                "parts": parts}
    return atomic_write_json(path.with_name(f"{path.name}.parts.json"), manifest)


def join_parts(manifest_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Rebuild the file described by a ``.parts.json`` manifest (parts beside it), checking
    every part's and the whole file's size and sha256; nothing is written unless all match."""
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{manifest_path}: cannot read the parts manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != PARTS_FORMAT:
        raise ValueError(f"{manifest_path}: not a parts manifest (expected format {PARTS_FORMAT!r})")
    chunks = []
    for part in manifest["parts"]:
        p = manifest_path.with_name(part["file"])
        if not p.is_file():
            raise FileNotFoundError(f"{p}: part missing (listed in {manifest_path.name})")
        chunk = p.read_bytes()
        if len(chunk) != part["bytes"] or _sha256(chunk) != part["sha256"]:
            raise ValueError(f"{p}: part damaged ({len(chunk)} bytes, sha256 {_sha256(chunk)[:12]}...; "
                             f"expected {part['bytes']} bytes, sha256 {part['sha256'][:12]}...)")
        chunks.append(chunk)
    data = b"".join(chunks)
    if len(data) != manifest["bytes"] or _sha256(data) != manifest["sha256"]:
        raise ValueError(f"{manifest_path}: the joined file does not match the manifest's size and sha256")
    target = Path(out) if out is not None else manifest_path.with_name(manifest["file"])
    return atomic_write(target, lambda fh: fh.write(data), binary=True)


# ----------------------------------------------------------------------------- run-folder lock

class RunLock:
    """An exclusive lock on a run folder: ``.lock`` holds the owner's PID, host and start
    time, created atomically (O_EXCL). A second process finds it and stops with a message
    naming the owner; a lock whose process is gone (same host, PID not alive) is taken
    over with a notice. Released (deleted) by :meth:`release`."""

    def __init__(self, folder: str | os.PathLike, notice: Callable[[str], None] | None = None) -> None:
        self.path = Path(folder) / ".lock"
        self.notice = notice or (lambda msg: None)
        self.held = False

    def acquire(self) -> "RunLock":
        import socket
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and owner.get("host") == me["host"] and not _pid_alive(owner.get("pid")):
                    self.notice(f"{self.path}: taking over the lock of a run that is gone "
                                f"(pid {owner.get('pid')}, since {owner.get('since')})")
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}" if owner
                       else "an unreadable lock file")
                raise RuntimeError(f"{self.path.parent}: another run is using this folder ({who}); wait for it "
                                   f"to end, or use another output folder (if no run is going on, delete {self.path})")
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise RuntimeError(f"{self.path}: could not take the lock")

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
