from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from urllib.error import HTTPError

import pytest

from dmrnet.data import store
from dmrnet.data.store import DataStore, RemoteFile, sha256_file
from dmrnet.errors import DataError

CONTENT = b"six views of two thousand digits\n" * 100


def remote_for(content: bytes, url: str = "https://example.invalid/sample.bin") -> RemoteFile:
    return RemoteFile(path="sample/sample.bin", url=url, sha256=hashlib.sha256(content).hexdigest())


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR if path.is_dir() else stat.S_IRUSR)


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = write(tmp_path / "f.bin", CONTENT)
    assert sha256_file(path) == hashlib.sha256(CONTENT).hexdigest()


def test_fetch_prefers_mirror_and_leaves_cache_untouched(tmp_path: Path) -> None:
    remote = remote_for(CONTENT)
    mirror_file = write(tmp_path / "mirror" / remote.path, CONTENT)
    data_store = DataStore(tmp_path / "mirror", cache=tmp_path / "cache")
    assert data_store.fetch(remote) == mirror_file
    assert not (tmp_path / "cache").exists()


def test_fetch_uses_cached_copy_when_no_mirror(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DMRNET_DATA", raising=False)
    remote = remote_for(CONTENT)
    cached = write(tmp_path / "cache" / "data" / remote.path, CONTENT)
    data_store = DataStore(cache=tmp_path / "cache")
    assert data_store.mirror is None
    assert data_store.fetch(remote) == cached


def test_fetch_downloads_into_cache_and_never_writes_into_read_only_mirror(
    tmp_path: Path,
) -> None:
    source = write(tmp_path / "published" / "sample.bin", CONTENT)
    remote = remote_for(CONTENT, url=source.as_uri())
    mirror = tmp_path / "mirror"
    write(mirror / "other" / "unrelated.txt", b"x")
    make_read_only(mirror)
    before = listing(mirror)
    data_store = DataStore(mirror, cache=tmp_path / "cache")

    path = data_store.fetch(remote)

    assert path == tmp_path / "cache" / "data" / remote.path
    assert path.read_bytes() == CONTENT
    assert listing(mirror) == before
    assert listing(path.parent) == ["sample.bin"]  # no partial download left behind
    assert data_store.fetch(remote) == path  # second call finds the cached copy


def test_fetch_hashes_each_file_once_per_process(tmp_path: Path, monkeypatch) -> None:
    remote = remote_for(CONTENT)
    write(tmp_path / "mirror" / remote.path, CONTENT)
    calls = []

    def counting_sha256(path: Path) -> str:
        calls.append(path)
        return sha256_file(path)

    monkeypatch.setattr(store, "sha256_file", counting_sha256)
    data_store = DataStore(tmp_path / "mirror", cache=tmp_path / "cache")
    data_store.fetch(remote)
    DataStore(tmp_path / "mirror", cache=tmp_path / "cache").fetch(remote)
    assert len(calls) == 1


def test_offline_download_error_names_file_url_and_fix(tmp_path: Path) -> None:
    remote = remote_for(CONTENT)  # an https URL: the tests' network guard refuses it
    data_store = DataStore(tmp_path / "mirror", cache=tmp_path / "cache")
    with pytest.raises(DataError) as error:
        data_store.fetch(remote)
    message = str(error.value)
    assert f"could not download {remote.path} from {remote.url}" in message
    assert "network access is disabled" in message
    assert str(tmp_path / "mirror" / remote.path) in message
    assert "DMRNET_DATA" in message
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_http_error_reports_status(tmp_path: Path, monkeypatch) -> None:
    def not_found(url: str, *args, **kwargs):
        raise HTTPError(url, 404, "Not Found", hdrs=None, fp=None)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "urlopen", not_found)
    with pytest.raises(DataError, match="HTTP Error 404"):
        DataStore(cache=tmp_path / "cache").fetch(remote_for(CONTENT))


def test_mirror_checksum_mismatch_names_digests_and_path(tmp_path: Path) -> None:
    remote = remote_for(CONTENT)
    bad = write(tmp_path / "mirror" / remote.path, b"something else")
    with pytest.raises(DataError) as error:
        DataStore(tmp_path / "mirror", cache=tmp_path / "cache").fetch(remote)
    message = str(error.value)
    assert remote.sha256 in message
    assert hashlib.sha256(b"something else").hexdigest() in message
    assert str(bad) in message
    assert "the mirror holds a different file" in message


def test_cache_checksum_mismatch_says_delete_to_redownload(tmp_path: Path) -> None:
    remote = remote_for(CONTENT)
    bad = write(tmp_path / "cache" / "data" / remote.path, b"truncated")
    with pytest.raises(DataError, match="delete it to re-download") as error:
        DataStore(cache=tmp_path / "cache").fetch(remote)
    assert str(bad) in str(error.value)


def test_corrupt_download_is_rejected_and_not_kept(tmp_path: Path) -> None:
    source = write(tmp_path / "published" / "sample.bin", b"tampered")
    remote = remote_for(CONTENT, url=source.as_uri())
    with pytest.raises(DataError, match="checksum mismatch"):
        DataStore(cache=tmp_path / "cache").fetch(remote)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_locate_finds_existing_copies_without_downloading(tmp_path: Path) -> None:
    remote = remote_for(CONTENT)
    data_store = DataStore(tmp_path / "mirror", cache=tmp_path / "cache")
    assert data_store.locate(remote) is None
    cached = write(tmp_path / "cache" / "data" / remote.path, CONTENT)
    assert data_store.locate(remote) == cached
    mirrored = write(tmp_path / "mirror" / remote.path, CONTENT)
    assert data_store.locate(remote) == mirrored


def test_roots_come_from_arguments_then_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DMRNET_DATA", str(tmp_path / "env-mirror"))
    monkeypatch.setenv("DMRNET_CACHE", str(tmp_path / "env-cache"))
    from_env = DataStore()
    assert from_env.mirror == tmp_path / "env-mirror"
    assert from_env.cache == tmp_path / "env-cache"
    explicit = DataStore(tmp_path / "cli-root")
    assert explicit.mirror == tmp_path / "cli-root"


def test_cache_dir_is_created_on_demand(tmp_path: Path) -> None:
    folder = DataStore(cache=tmp_path / "cache").cache_dir("avdigits")
    assert folder.is_dir()
    assert os.access(folder, os.W_OK)
    assert folder.is_relative_to(tmp_path / "cache")
