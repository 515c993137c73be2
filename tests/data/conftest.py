"""Data tests never touch the network or the user's cache.

Downloads are allowed from file:// URLs only (the store tests use them); anything else fails the
way an offline machine would, so a test that would silently download shows up as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest

from dmrnet.data import store


@pytest.fixture(autouse=True)
def _isolated_cache_and_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMRNET_CACHE", str(tmp_path / "user-cache"))
    real_urlopen: Callable[..., Any] = store.urlopen

    def file_urls_only(url: str, *args: Any, **kwargs: Any) -> Any:
        if not url.startswith("file:"):
            raise URLError("network access is disabled in the tests")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(store, "urlopen", file_urls_only)
