"""Where dmrnet's data files live, and how they get there.

Two roots, kept apart on purpose:

- the *mirror*: a folder that already holds the files in the data-root layout
  (`handwritten/handwritten_6views.mat`, ...). It comes from `--data-root` or `DMRNET_DATA` and may
  be read-only (CI mounts it without write bits), so dmrnet never writes into it;
- the *cache*: a writable folder (`DMRNET_CACHE`, else the platform's user cache dir) that receives
  downloads under `data/` (same layout as a mirror, so it can serve as one) and derived files under
  `derived/<name>/`.

Every file is checked against the sha256 pinned in its `RemoteFile`, once per process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import platformdirs

from dmrnet.errors import DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0

# (resolved path, size, mtime_ns) -> sha256: a file is hashed once per process, and again only if
# it changes on disk.
_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class RemoteFile:
    """A public file a dataset needs: its place in the data root, its source, its digest."""

    path: str  # relative to the data root, "/"-separated
    url: str
    sha256: str
    size: int | None = None  # bytes; informative (shown by `dmrnet datasets`)
    description: str = ""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so large files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


class DataStore:
    """Finds, verifies and (if needed) downloads the files datasets ask for.

    `root` is the mirror (the CLI's `--data-root`); without it `DMRNET_DATA` is used, and without
    that there is no mirror. `cache` overrides `DMRNET_CACHE` and the platform default.
    """

    def __init__(self, root: str | Path | None = None, cache: str | Path | None = None) -> None:
        mirror = root or os.environ.get("DMRNET_DATA") or None
        self.mirror: Path | None = Path(mirror).expanduser() if mirror is not None else None
        cache_root = (
            cache or os.environ.get("DMRNET_CACHE") or platformdirs.user_cache_dir("dmrnet")
        )
        self.cache: Path = Path(cache_root).expanduser()

    def _mirror_path(self, remote: RemoteFile) -> Path | None:
        return self.mirror / remote.path if self.mirror is not None else None

    def _cache_path(self, remote: RemoteFile) -> Path:
        return self.cache / "data" / remote.path

    def locate(self, remote: RemoteFile) -> Path | None:
        """Where the file is (mirror first, then cache), or None; never downloads or hashes."""
        mirror_path = self._mirror_path(remote)
        for candidate in (mirror_path, self._cache_path(remote)):
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def fetch(self, remote: RemoteFile) -> Path:
        """Path to a verified copy of `remote`, downloading it into the cache if no copy exists."""
        mirror_path = self._mirror_path(remote)
        if mirror_path is not None and mirror_path.is_file():
            self._verify(
                remote,
                mirror_path,
                "the mirror holds a different file; replace it with the published one "
                f"({remote.url}) or point DMRNET_DATA / --data-root elsewhere",
            )
            return mirror_path
        cache_path = self._cache_path(remote)
        if cache_path.is_file():
            self._verify(remote, cache_path, "delete it to re-download")
            return cache_path
        self._download(remote, cache_path)
        return cache_path

    def cache_dir(self, name: str) -> Path:
        """A writable folder for files derived from the data (decoded audio, composed scenes)."""
        path = self.cache / "derived" / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create the cache folder {path}: {exc}; set DMRNET_CACHE to a writable "
                "folder"
            ) from exc
        return path

    def _looked_in(self, remote: RemoteFile) -> str:
        mirror_path = self._mirror_path(remote)
        mirror = f"{mirror_path} (mirror)" if mirror_path is not None else "no mirror set"
        return f"looked in {mirror} and {self._cache_path(remote)} (cache)"

    def _fix_hint(self, remote: RemoteFile) -> str:
        where = self.mirror if self.mirror is not None else "<folder>"
        return (
            f"place the file at {where}/{remote.path} or set DMRNET_DATA (or --data-root) to a "
            f"folder holding {remote.path}"
        )

    def _verify(self, remote: RemoteFile, path: Path, fix: str) -> None:
        found = _cached_sha256(path)
        if found != remote.sha256:
            raise DataError(
                f"checksum mismatch for {remote.path} at {path}: expected sha256 {remote.sha256}, "
                f"found {found}; {fix}"
            )

    def _download(self, remote: RemoteFile, target: Path) -> None:
        """Download to a temporary file beside `target`, verify, then rename atomically.

        A crash or a bad download therefore never leaves a partial file under the final name.
        """
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, partial_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".part"
            )
        except OSError as exc:
            raise DataError(
                f"{remote.path} is not available locally ({self._looked_in(remote)}) and the "
                f"cache folder is not writable ({exc}); set DMRNET_CACHE to a writable folder or "
                f"{self._fix_hint(remote)}"
            ) from exc
        partial = Path(partial_name)
        log.info("downloading %s from %s", remote.path, remote.url)
        digest = hashlib.sha256()
        try:
            with (
                os.fdopen(descriptor, "wb") as handle,
                urlopen(remote.url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
            ):
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
        except (URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            # HTTPError's str() carries the status code; a plain URLError's reason is the cause.
            reason = exc.reason if type(exc) is URLError else exc
            raise DataError(
                f"could not download {remote.path} from {remote.url}: {reason} "
                f"({self._looked_in(remote)}); {self._fix_hint(remote)}"
            ) from exc
        if digest.hexdigest() != remote.sha256:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"checksum mismatch for {remote.path} downloaded from {remote.url}: expected "
                f"sha256 {remote.sha256}, found {digest.hexdigest()}; the download was corrupted "
                f"or the source changed; {self._fix_hint(remote)}"
            )
        os.replace(partial, target)
        stat = target.stat()
        _DIGESTS[(str(target.resolve()), stat.st_size, stat.st_mtime_ns)] = digest.hexdigest()
