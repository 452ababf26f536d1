"""`engines/<name>/manifest.json`: what was built, from what, for which device, with every file's hash.

Reading checks the whole file before anything uses it: every key is known and present, every value
has its type and range, and the fields that belong together agree (the input shape and the
preprocessing, the output shape and the map size, the hashes and the files the engines name). A
digest over the whole manifest and a fingerprint per engine catch any edit a value check cannot
(a `max_batch` of 4 made 16): every such case is the one "edited or damaged: rebuild" error, naming
the key where a key can be named. Loading then verifies the hashes of the files it is about to run
and, for TensorRT, that this is the GPU and TensorRT version the engine was built for.
No torch here (edge path).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from edgead.errors import EdgeADError
from edgead.io import atomic_write_json, check_input, json_line, sha256_file
from edgead.preprocess import PreprocessSpec
from edgead.schema import Place, at_least, build, is_number, known_keys, mapping, need, one_of

MANIFEST = "manifest.json"
FORMAT = 2
BACKENDS = ("tensorrt", "onnxruntime", "openvino")
PRECISIONS = ("fp16", "fp32", "int8")
# What OpenVINO runs: its CPU plugin reads the FP32 and the INT8 (QDQ) ONNX graphs.
OPENVINO_PRECISIONS = ("fp32", "int8")
ROLES = ("teacher", "student")
DAMAGED = "this engine folder was edited or is damaged"
REBUILD = "rebuild it with `edgead build-engine --model models/NAME`; never edit an engine folder by hand"
# The top-level fields that say how an engine is fed and read: part of every engine's fingerprint.
# The rest (format, edgead_version, created, host, model, val_good_scores) is provenance, covered by
# the digest only, so the same model built again (elsewhere, later) keeps its fingerprint.
RUN_FIELDS = ("preprocess", "input", "feature_names", "feature_shapes", "outputs", "map_size")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_log = logging.getLogger("edgead.engine")


@dataclass(frozen=True)
class _Model:
    path: str
    preset: str | None
    data_fingerprint: str | None
    fusion: str


@dataclass(frozen=True)
class _Input:
    name: str
    shape: list[Any]
    dtype: str


@dataclass(frozen=True)
class _Outputs:
    map: list[Any]
    score: list[Any]


@dataclass(frozen=True)
class _Device:
    gpu: str
    compute_capability: str
    tensorrt: str
    dla_core: int | None


@dataclass(frozen=True)
class _Entry:
    backend: str
    precision: str
    files: dict[str, Any]
    max_batch: int
    fingerprint: str
    runtime_version: str | None = None     # ONNX Runtime's or OpenVINO's version at build time
    device: dict[str, Any] | None = None   # TensorRT: the GPU and TensorRT version the plans were built for


@dataclass(frozen=True)
class _Manifest:
    format: int
    edgead_version: str
    created: str
    host: str
    model: _Model
    preprocess: dict[str, Any]
    input: _Input
    feature_names: list[str]
    feature_shapes: dict[str, Any]
    outputs: _Outputs
    map_size: tuple[int, int]
    val_good_scores: dict[str, Any] | None
    engines: list[Any]
    sha256: dict[str, Any]
    digest: str


def entry_fingerprint(manifest: dict[str, Any], entry: dict[str, Any]) -> str:
    """sha256 of what decides how an engine runs and what it scores: its whole entry (backend,
    precision, runtime or device, max batch), its files' hashes, and RUN_FIELDS."""
    engine = {k: v for k, v in entry.items() if k != "fingerprint"}
    engine["files"] = {role: manifest["sha256"][name] for role, name in sorted(entry["files"].items())}
    payload = {"engine": engine, "run": {k: manifest[k] for k in RUN_FIELDS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the whole manifest but its digest: no field can change unnoticed."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(engine_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file the engines name, add each engine's fingerprint and the digest, write atomically.

    Returns the manifest as written (JSON types: what `read_manifest` will read back)."""
    manifest = json.loads(json_line({k: v for k, v in manifest.items() if k not in ("sha256", "digest")}))
    names = sorted({n for e in manifest["engines"] for n in e["files"].values()})
    manifest["sha256"] = {n: sha256_file(Path(engine_dir) / n) for n in names}
    for entry in manifest["engines"]:
        entry["fingerprint"] = entry_fingerprint(manifest, entry)
    manifest["digest"] = manifest_digest(manifest)
    atomic_write_json(Path(engine_dir) / MANIFEST, manifest)
    return manifest


def damaged(detail: str) -> EdgeADError:
    """The one error for an engine folder that is not as build-engine wrote it; `detail` names what."""
    return EdgeADError(f"{detail}: {DAMAGED}", REBUILD)


def read_manifest(engine_dir: Path) -> dict[str, Any]:
    """The manifest of an engine folder, checked whole (see the module docstring)."""
    path = engine_dir / MANIFEST
    check_input(engine_dir, kind="dir", what="engine folder",
                hint="build one with `edgead build-engine --model models/NAME`")
    if not path.exists():
        raise EdgeADError(f"{engine_dir} holds no {MANIFEST}: not an edgead engine folder",
                          "point --engine at the folder written by `edgead build-engine`")
    check_input(path, kind="file", what="engine manifest", hint="point --engine at the folder written by "
                                                                "`edgead build-engine`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:        # ValueError: bad JSON or bad UTF-8
        raise damaged(f"{path} is unreadable or not JSON ({exc.__class__.__name__})") from None
    if isinstance(manifest, dict) and isinstance(manifest.get("format"), int) and manifest["format"] != FORMAT:
        raise EdgeADError(f"{path} has format {manifest['format']!r}, this edgead reads format {FORMAT}",
                          "rebuild the engine with this edgead version: `edgead build-engine --model models/NAME`")
    try:
        check_manifest(manifest, Place(str(path)))
    except EdgeADError as exc:
        raise damaged(f"{exc.message} ({exc.hint})") from None
    if manifest["digest"] != manifest_digest(manifest):
        raise damaged(f"{path}: its contents do not match its digest")
    for i, entry in enumerate(manifest["engines"]):
        if entry["fingerprint"] != entry_fingerprint(manifest, entry):
            raise damaged(f"{path}: engines[{i}] ({entry['backend']}/{entry['precision']}) does not match its fingerprint")
    return manifest


def _build(cls: type, data: Any, place: Place) -> Any:
    """schema.build, after refusing a missing required key by name."""
    known_keys(mapping(data, place, "it must be a JSON object"), [f.name for f in fields(cls)], place)
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
    if missing:
        raise place.error(f"'{place.key(missing[0])}' is missing", f"required keys: {', '.join(missing)}")
    return build(cls, data, place)


def _hex(place: Place, name: str, value: Any) -> None:
    if not (isinstance(value, str) and _HEX64.fullmatch(value)):
        raise place.bad(name, value, "a sha256 (64 hex digits)")


def _dims(place: Place, name: str, value: Any, lead: list[Any], rank: int) -> None:
    """A shape: `lead` then positive whole numbers, `rank` dims in all."""
    ok = (isinstance(value, list) and len(value) == rank and value[:len(lead)] == lead
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value[len(lead):]))
    if not ok:
        raise place.bad(name, value, f"a list of {rank}: {', '.join(map(repr, lead))}, then positive whole numbers")


def check_manifest(data: Any, place: Place) -> None:
    """Every key, type, range and cross-field rule of a manifest; an EdgeADError naming the key."""
    m = _build(_Manifest, data, place)
    one_of(place, "format", m.format, (FORMAT,))
    _build(_Model, data["model"], place.child("model"))
    try:
        spec = PreprocessSpec.from_dict(m.preprocess)
    except EdgeADError as exc:
        raise place.error(f"'preprocess': {exc.message}", exc.hint) from None
    inp = _build(_Input, data["input"], place.child("input"))
    one_of(place, "input.name", inp.name, ("image",))
    one_of(place, "input.dtype", inp.dtype, ("float32",))
    need(place, inp.shape == ["batch", 3, spec.height, spec.width], f"'input.shape' {inp.shape!r} does not match "
         f"the preprocessing ({spec.height} x {spec.width})", f"expected ['batch', 3, {spec.height}, {spec.width}]")
    need(place, bool(m.feature_names) and len(set(m.feature_names)) == len(m.feature_names),
         f"'feature_names' {m.feature_names!r} is empty or names a tensor twice", "expected distinct names")
    need(place, sorted(m.feature_shapes) == sorted(m.feature_names), "'feature_shapes' does not name the "
         "feature tensors", f"expected one shape for each of {', '.join(m.feature_names)}")
    for name, shape in m.feature_shapes.items():
        _dims(place.child("feature_shapes"), name, shape, [], 3)
    for name, size in zip(("height", "width"), m.map_size):
        at_least(place, f"map_size.{name}", size, 1)
    out = _build(_Outputs, data["outputs"], place.child("outputs"))
    need(place, out.map == ["batch", 1, *m.map_size], f"'outputs.map' {out.map!r} does not match 'map_size'",
         f"expected ['batch', 1, {m.map_size[0]}, {m.map_size[1]}]")
    one_of(place, "outputs.score", out.score, (["batch"],))
    for key, value in (m.val_good_scores or {}).items():
        need(place, value is None or is_number(value), f"'val_good_scores.{key}' has a bad value {value!r}",
             "expected a number or null")
    _check_engines(data["engines"], m.sha256, place)
    _hex(place, "digest", m.digest)


def _check_engines(engines: list[Any], sha256: dict[str, Any], place: Place) -> None:
    need(place, bool(engines), "'engines' is empty", "expected at least one engine")
    named: set[str] = set()
    kinds: set[tuple[str, str]] = set()
    for i, data in enumerate(engines):
        p = place.child(f"engines[{i}]")
        e = _build(_Entry, data, p)
        one_of(p, "backend", e.backend, BACKENDS)
        one_of(p, "precision", e.precision, PRECISIONS)
        need(p, (e.backend, e.precision) not in kinds, f"a second {e.backend}/{e.precision} engine",
             "expected one engine per backend and precision")
        kinds.add((e.backend, e.precision))
        need(p, sorted(e.files) == sorted(ROLES), f"'{p.key('files')}' names {sorted(e.files)}",
             f"expected the files of: {', '.join(ROLES)}")
        for role, name in e.files.items():
            if not (isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")):
                raise p.bad(f"files.{role}", name, "a file name in the engine folder")
        need(p, len(set(e.files.values())) == len(ROLES), f"'{p.key('files')}' names one file twice",
             "expected a file per role")
        named.update(e.files.values())
        at_least(p, "max_batch", e.max_batch, 1)
        _hex(p, "fingerprint", e.fingerprint)
        if e.backend == "tensorrt":
            device = _build(_Device, e.device, p.child("device"))
            at_least(p, "device.dla_core", device.dla_core, 0, optional=True)
        else:
            need(p, e.backend != "openvino" or e.precision in OPENVINO_PRECISIONS, f"an openvino/{e.precision} "
                 "engine", f"OpenVINO engines are {' or '.join(OPENVINO_PRECISIONS)}")
            need(p, e.device is None and isinstance(e.runtime_version, str), f"'{p.key('runtime_version')}' or "
                 f"'{p.key('device')}' is wrong for {e.backend}", "expected runtime_version text and no device")
    need(place, sorted(sha256) == sorted(named), f"'sha256' names {sorted(sha256)}",
         f"expected a hash for each engine file: {', '.join(sorted(named))}")
    for name, digest in sha256.items():
        _hex(place.child("sha256"), name, digest)


def preprocess_spec(manifest: dict[str, Any]) -> PreprocessSpec:
    """The preprocessing the engines of a manifest were built with (what run, calibrate and bench feed them)."""
    return PreprocessSpec.from_dict(manifest["preprocess"])


def engine_preprocessing(engine_dir: str | Path) -> PreprocessSpec:
    """The preprocessing of an engine folder, read from its checked manifest."""
    return preprocess_spec(read_manifest(Path(engine_dir)))


def verify_files(engine_dir: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    """The files of one engine are there and are the ones its manifest hashed; its fingerprint holds."""
    for name in entry["files"].values():
        path = engine_dir / name
        if not path.is_file():
            raise damaged(f"engine file {path} is missing")
        actual = sha256_file(path)
        if actual != manifest["sha256"].get(name):
            raise damaged(f"engine file {path} does not match its manifest (sha256 {actual[:12]}..., "
                          f"expected {str(manifest['sha256'].get(name))[:12]}...)")
    if entry.get("fingerprint") != entry_fingerprint(manifest, entry):
        raise damaged(f"{engine_dir / MANIFEST}: its fingerprint does not match its contents")


def tensorrt_usable() -> bool:
    """TensorRT and cuda-python import and CUDA sees a GPU (probed once per process)."""
    return tensorrt_unusable_reason() is None


def tensorrt_unusable_reason() -> str | None:
    """Why TensorRT cannot run here (not installed, driver too old for cuda-python, no GPU), or None."""
    from edgead.backends.tensorrt import why_unusable

    return why_unusable()


def default_precision(backend: str, built: list[str]) -> str:
    """TensorRT runs what it was built in. On a CPU, INT8 where it was built (the user gave calibration
    images for it: the fastest CPU engine), else FP32 (ONNX Runtime's FP16 graph is slower on a CPU)."""
    for precision in (("fp16", "int8") if backend == "tensorrt" else ("int8", "fp32")):
        if precision in built:
            return precision
    return built[0]


def select_engine(manifest: dict[str, Any], backend: str = "auto", precision: str | None = None,
                  engine_dir: Path | None = None) -> dict[str, Any]:
    """Pick the engine entry to run: TensorRT where built and usable here, else ONNX Runtime (OpenVINO
    when asked for: `--backend openvino`)."""
    if backend not in ("auto", *BACKENDS):
        raise EdgeADError(f"unknown backend {backend!r}", f"use auto, {', '.join(BACKENDS)}")
    if precision not in (None, *PRECISIONS):
        raise EdgeADError(f"unknown precision {precision!r}", f"use {' or '.join(PRECISIONS)}")
    entries = manifest["engines"]
    if backend == "auto":
        backend = "onnxruntime"
        if any(e["backend"] == "tensorrt" for e in entries):        # only then is the GPU probed
            reason = tensorrt_unusable_reason()
            if reason is None:
                backend = "tensorrt"
            else:
                _log.warning("the TensorRT engine of this folder is not used: %s; running ONNX Runtime", reason)
    candidates = [e for e in entries if e["backend"] == backend]
    if not candidates:
        built = ", ".join(f"{e['backend']}/{e['precision']}" for e in entries)
        raise EdgeADError(f"this engine folder has no {backend} engine (it has: {built})",
                          f"rebuild with `edgead build-engine --backend {backend}` on this device")
    if precision is None:
        precision = default_precision(backend, [e["precision"] for e in candidates])
    chosen = [e for e in candidates if e["precision"] == precision]
    if not chosen:
        raise EdgeADError(f"no {backend} engine in {precision} in this folder",
                          f"available: {', '.join(e['precision'] for e in candidates)}; or rebuild with --precision {precision}")
    entry = chosen[0]
    if engine_dir is not None:
        verify_files(engine_dir, manifest, entry)
    return entry
