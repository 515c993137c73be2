"""Files a run can trust: atomic writes, checksums, and one writer per run directory.

Every file dmrnet writes into a run (checkpoints, results.*, metrics.csv, config.yaml, pictures)
goes through `atomic_write`: the bytes go to a temporary file in the destination folder, are
fsynced, and replace the destination with one rename. A crash, a signal or a full disk leaves
either the old file or the new one, never a truncated one, and no temporary file elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from dmrnet.errors import CheckpointError, DmrnetError


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it replaces `path`.

    `mode` is "w" (text) or "wb". On any failure (an exception, a signal raised as one, ENOSPC)
    the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:
        raise DmrnetError(f"{path}: cannot write here: {error.strerror or error}") from None
    try:
        with os.fdopen(descriptor, mode, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise DmrnetError(f"{path}: cannot write: {error.strerror or error}") from None
    except BaseException:
        _remove(temporary)
        raise
    _fsync_folder(path.parent)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# --- checksums ---------------------------------------------------------------------------------

CHECKSUM_SUFFIX = ".sha256"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def update_checkpoint(path: str | Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Load the checkpoint at `path` (weights only), let `edit` change it in place, and write it
    back atomically with its sha256 record updated (e.g. what was fitted after training)."""
    import torch  # here: dmrnet.files is imported where torch is not needed

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    edit(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_with_checksum(path, buffer.getvalue())


def write_with_checksum(path: str | Path, data: bytes) -> None:
    """Write `data` atomically and record its sha256 beside it (`PATH.sha256`, the format of
    `sha256sum`, so `sha256sum -c best.ckpt.sha256` checks it by hand too).

    In two phases, so that a kill at any moment leaves a file that matches its record: the
    record first lists the new digest beside the old one, then the file is replaced, then the
    record keeps the new digest alone.
    """
    path = Path(path)
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    new = f"{sha256_of(data)}  {path.name}\n"
    if record.is_file():
        write_text(record, new + record.read_text())
    write_bytes(path, data)
    write_text(record, new)


def verify_checksum(path: Path, data: bytes) -> None:
    """Compare `data` (the content of `path`) with its recorded sha256, if one is recorded."""
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    if not record.is_file():
        return
    recorded = [line.split()[0] for line in record.read_text().splitlines() if line.split()]
    actual = sha256_of(data)
    if actual not in recorded:
        expected = recorded[0] if recorded else "nothing"
        raise CheckpointError(
            f"{path}: sha256 {actual[:16]}... does not match the one recorded when it was written "
            f"({expected[:16]}... in {record.name}); the file was changed or damaged"
        )


# --- one writer per run directory --------------------------------------------------------------

LOCK_NAME = ".lock"


class RunLock:
    """`RUN_DIR/.lock`, created exclusively, holding the writer's pid, host and start time.

    A second writer gets a DmrnetError naming the holder. A lock left by a process of this host
    that no longer runs (SIGKILL, power loss) is stale: it is reported and taken over.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.stale: dict[str, Any] | None = None  # the stale holder taken over, if any

    def acquire(self) -> RunLock:
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._is_stale(holder):
                    raise DmrnetError(self._busy_message(holder)) from None
                self.stale = holder
                _remove(str(self.path))
                continue
            except OSError as error:
                raise DmrnetError(
                    f"{self.path.parent}: cannot write the run directory: {error.strerror or error}"
                ) from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(mine, handle)
            return self
        raise DmrnetError(self._busy_message(self._holder()))

    def release(self) -> None:
        holder = self._holder()
        if holder.get("pid") == os.getpid():
            _remove(str(self.path))

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if not holder:
            # Unreadable: half-written by a writer that died, or being written right now.
            with contextlib.suppress(OSError):
                return time.time() - self.path.stat().st_mtime > 5.0
            return True
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False  # another host's process cannot be checked from here
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _busy_message(self, holder: dict[str, Any]) -> str:
        started = holder.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
        return (
            f"{self.path.parent} is in use by another dmrnet process (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {when}); wait for it, or delete {self.path} if that "
            "process is gone"
        )

    def describe_stale(self) -> str | None:
        if self.stale is None:
            return None
        return (
            f"took over the stale lock {self.path} of pid {self.stale.get('pid')} on "
            f"{self.stale.get('host')}, which no longer runs"
        )


def save_figure(figure: Any, path: str | Path, **options: Any) -> None:
    """A matplotlib figure written atomically (rendered in memory, then replaced)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **options)
    write_bytes(path, buffer.getvalue())
