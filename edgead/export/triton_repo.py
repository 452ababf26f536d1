"""A Triton Inference Server model repository from an engine folder (`build-engine --engine E --triton-repo DIR`).

    DIR/NAME_teacher/config.pbtxt, 1/model.onnx (or model.plan)   the teacher: image -> features
    DIR/NAME_student/config.pbtxt, 1/model.onnx (or model.plan)   the student: image + features -> map, score
    DIR/NAME/config.pbtxt, 1/ (empty)                            the ensemble clients call: image -> map, score
    DIR/NAME/edgead_manifest.json                                what the ensemble's `edgead_manifest` carries

The ensemble runs the teacher then the student on the server, so the features never cross the
network. Teacher and student batch dynamically (preferred sizes: powers of two up to max batch, a short
queue delay) and run on the GPU (`device="cpu"`: KIND_CPU). Inputs, outputs and types are read from
the ONNX graphs themselves (ONNX Runtime's session, which the edge box has), and must agree with the
manifest. A TensorRT entry of the chosen precision is served as `model.plan` (platform
tensorrt_plan): a plan runs only on the GPU model and with the TensorRT version it was built with, so
build it on the server's GPU with the TensorRT of the Triton release it runs; its tensors are those of
the ONNX graphs it was built from. The pbtxt files are written by our own small text-format writer,
so exporting needs no tritonclient. No torch here: this runs on an edge box as well.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgead.backends.manifest import damaged, default_precision, read_manifest, select_engine
from edgead.backends.triton import PARAMETER, served_document
from edgead.errors import EdgeADError
from edgead.io import atomic_write_json, atomic_write_text, check_input, check_output, json_line, sha256_file

DEVICES = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEFAULT_QUEUE_DELAY_US = 500
MANIFEST_FILE = "edgead_manifest.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# ONNX Runtime's type strings -> Triton's data types
TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(bfloat16)": "TYPE_BF16",
                "tensor(double)": "TYPE_FP64", "tensor(int8)": "TYPE_INT8", "tensor(uint8)": "TYPE_UINT8",
                "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL"}

Tensor = Tuple[str, str, List[int]]          # (name, Triton type, dims without the batch dim)


class Enum(str):
    """A protobuf enum value: written bare (KIND_GPU), not quoted."""


# ---------------------------------------------------------------- text format


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; bytes outside printable ASCII in octal)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
                   or (ch if 32 <= byte < 127 else f"\\{byte:03o}"))
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _quote(str(value))


def to_pbtxt(message: Dict[str, Any], indent: int = 0) -> str:
    """A message as protobuf text format: dicts are messages, a list of dicts a repeated message (one
    block each), a list of scalars a repeated scalar (`dims: [ 3, 64, 64 ]`)."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            items = ", ".join(_scalar(v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]" if items else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------- the graphs


def graph_io(path: Path) -> Tuple[List[Tensor], List[Tensor]]:
    """(inputs, outputs) of an ONNX graph as Triton sees them: batch dim dropped, other dynamic dims -1."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EdgeADError("ONNX Runtime is needed to read the graphs' inputs and outputs",
                          "pip install onnxruntime") from exc
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for unloadable graphs
        raise damaged(f"{path} cannot be loaded ({str(exc).splitlines()[0][:200]})") from None

    def tensors(args: Any) -> List[Tensor]:
        out = []
        for a in args:
            if a.type not in TRITON_TYPES or not a.shape or isinstance(a.shape[0], int) and a.shape[0] > 0:
                raise EdgeADError(f"{path}: tensor {a.name} ({a.type}, shape {a.shape}) has no dynamic batch "
                                  "dim or a type Triton does not serve", "rebuild the engine with `edgead build-engine`")
            out.append((a.name, TRITON_TYPES[a.type], [d if isinstance(d, int) and d > 0 else -1 for d in a.shape[1:]]))
        return out

    return tensors(session.get_inputs()), tensors(session.get_outputs())


def _check_io(io: Dict[str, Tuple[List[Tensor], List[Tensor]]], manifest: Dict[str, Any]) -> None:
    """The graphs take and give what the manifest says (else the folder is not what was built)."""
    feats = list(manifest["feature_names"])
    names = {role: ([t[0] for t in ins], [t[0] for t in outs]) for role, (ins, outs) in io.items()}
    want = {"teacher": (["image"], feats), "student": (["image", *feats], ["map", "score"])}
    for role in want:
        if sorted(names[role][0]) != sorted(want[role][0]) or sorted(names[role][1]) != sorted(want[role][1]):
            raise damaged(f"the {role} graph's tensors {names[role]} are not the manifest's {want[role]}")
    dims = {t[0]: t[2] for role in io for t in io[role][0] + io[role][1]}
    expected = {"image": manifest["input"]["shape"][1:], "map": manifest["outputs"]["map"][1:], "score": [],
                **{f: manifest["feature_shapes"][f] for f in feats}}
    bad = sorted(n for n in expected if dims[n] != list(expected[n]))
    if bad:
        raise damaged(f"the graphs' shapes of {', '.join(bad)} are not the manifest's")


def _tensor(t: Tensor, reshape: bool = True) -> Dict[str, Any]:
    """A config input/output; a batch-only tensor (score: [N]) is dims [1], the model's [] by `reshape`
    (the ensemble's is the student's [N, 1] as Triton passes it on, so it has no reshape)."""
    name, dtype, dims = t
    out: Dict[str, Any] = {"name": name, "data_type": Enum(dtype), "dims": dims or [1]}
    if not dims and reshape:
        out["reshape"] = {"shape": []}
    return out


# ---------------------------------------------------------------- the configs


def _preferred(max_batch: int) -> List[int]:
    sizes = [1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch]
    return sorted(set(sizes[-2:] + [max_batch]))


def model_config(name: str, platform: str, max_batch: int, io: Tuple[List[Tensor], List[Tensor]], device: str,
                 delay_us: int) -> Dict[str, Any]:
    """The teacher's or the student's config: its tensors, dynamic batching, one instance on the device."""
    return {"name": name, "platform": platform, "max_batch_size": max_batch,
            "input": [_tensor(t) for t in io[0]], "output": [_tensor(t) for t in io[1]],
            "instance_group": [{"count": 1, "kind": Enum(DEVICES[device])}],
            "dynamic_batching": {"preferred_batch_size": _preferred(max_batch),
                                 "max_queue_delay_microseconds": delay_us}}


def ensemble_config(name: str, max_batch: int, io: Dict[str, Tuple[List[Tensor], List[Tensor]]],
                    document: Dict[str, Any]) -> Dict[str, Any]:
    """image -> teacher -> features -> student (with the image) -> map, score, all on the server."""
    feats = [t[0] for t in io["teacher"][1]]
    steps = [{"model_name": f"{name}_teacher", "model_version": -1,
              "input_map": [{"key": "image", "value": "image"}],
              "output_map": [{"key": f, "value": f} for f in feats]},
             {"model_name": f"{name}_student", "model_version": -1,
              "input_map": [{"key": t[0], "value": t[0]} for t in io["student"][0]],
              "output_map": [{"key": t[0], "value": t[0]} for t in io["student"][1]]}]
    return {"name": name, "platform": "ensemble", "max_batch_size": max_batch,
            "input": [_tensor(t) for t in io["teacher"][0]], "output": [_tensor(t, reshape=False) for t in io["student"][1]],
            "ensemble_scheduling": {"step": steps},
            "parameters": [{"key": PARAMETER, "value": {"string_value": json_line(document)}}]}


# ---------------------------------------------------------------- the repository


def choose_entry(manifest: Dict[str, Any], engine_dir: Path, backend: str, precision: Optional[str],
                 device: str) -> Dict[str, Any]:
    """The engine to serve: a TensorRT plan where one was built (GPU), else the ONNX graphs (on a GPU
    FP16 where built; on a CPU the CPU default), its files verified."""
    if device not in DEVICES:
        raise EdgeADError(f"unknown Triton device {device!r}", "use gpu or cpu")
    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise EdgeADError(f"Triton serves onnxruntime or tensorrt engines, not {backend!r}",
                          "use --backend auto, onnxruntime or tensorrt")
    if backend == "tensorrt" and device == "cpu":
        raise EdgeADError("TensorRT plans run on a GPU", "serve the ONNX graphs on a CPU (--backend onnxruntime)")
    built = {(e["backend"], e["precision"]) for e in manifest["engines"]}
    if backend == "auto":
        trt = [p for b, p in built if b == "tensorrt" and precision in (None, p)]
        backend = "tensorrt" if device == "gpu" and trt else "onnxruntime"
    if precision is None:
        ours = [p for b, p in sorted(built) if b == backend]
        gpu_ort = ["fp16"] if "fp16" in ours else ["fp32"] if "fp32" in ours else ours
        precision = (default_precision(backend, ours) if backend == "tensorrt" or device == "cpu" or not ours
                     else gpu_ort[0])
    return select_engine(manifest, backend, precision, engine_dir)


def _graphs_of(manifest: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, str]:
    """The ONNX files whose tensors the served engine has (a plan's: those of its precision, else FP32)."""
    if entry["backend"] == "onnxruntime":
        return dict(entry["files"])
    ort = {e["precision"]: e for e in manifest["engines"] if e["backend"] == "onnxruntime"}
    source = ort.get(entry["precision"]) or ort.get("fp32")
    if source is None:
        raise damaged("the folder has no ONNX graphs beside its TensorRT plans")
    return dict(source["files"])


def write_triton_repository(engine_dir: str | Path, out_dir: str | Path, name: Optional[str] = None,
                            precision: Optional[str] = None, device: str = "gpu", backend: str = "auto",
                            max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, overwrite: bool = False,
                            log: Callable[[str], None] = lambda s: None) -> Path:
    """Write the repository (see the module docstring) into out_dir, atomically; returns its path."""
    engine_dir = check_input(engine_dir, kind="dir", what="--engine", hint="give an engine folder written by "
                             "`edgead build-engine`")
    manifest = read_manifest(engine_dir)
    name = name or engine_dir.resolve().name
    if not _NAME.fullmatch(name):
        raise EdgeADError(f"Triton model name {name!r} is not usable", "use letters, digits, _ . - (e.g. --name washer)")
    if not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise EdgeADError(f"max queue delay {max_queue_delay_us!r} must be whole microseconds >= 0", "e.g. 500")
    entry = choose_entry(manifest, engine_dir, backend, precision, device)
    out = check_output(out_dir, kind="dir", what="--triton-repo", overwrite=overwrite)
    graphs = _graphs_of(manifest, entry)
    io = {role: graph_io(engine_dir / graphs[role]) for role in ("teacher", "student")}
    _check_io(io, manifest)
    document = served_document(manifest, entry, name)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, engine_dir, manifest, entry, io, document, name, device, max_queue_delay_us)
        _swap(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote the Triton repository {out}: model {name!r} serves {entry['backend']}/{entry['precision']} "
        f"(max batch {entry['max_batch']}, fingerprint {entry['fingerprint'][:12]}...)")
    if entry["backend"] == "tensorrt":
        log(f"the plans run only on a {entry['device']['gpu']} with TensorRT {entry['device']['tensorrt']}: "
            "serve them with the Triton release built on that TensorRT")
    return out


def _write(tmp: Path, engine_dir: Path, manifest: Dict[str, Any], entry: Dict[str, Any],
           io: Dict[str, Tuple[List[Tensor], List[Tensor]]], document: Dict[str, Any], name: str, device: str,
           delay_us: int) -> None:
    plan = entry["backend"] == "tensorrt"
    platform, filename = ("tensorrt_plan", "model.plan") if plan else ("onnxruntime_onnx", "model.onnx")
    for role in ("teacher", "student"):
        folder = tmp / f"{name}_{role}" / "1"
        folder.mkdir(parents=True)
        source = entry["files"][role]
        shutil.copyfile(engine_dir / source, folder / filename)
        if sha256_file(folder / filename) != manifest["sha256"][source]:
            raise damaged(f"{engine_dir / source} changed while it was copied")
        config = model_config(f"{name}_{role}", platform, int(entry["max_batch"]), io[role], device, delay_us)
        atomic_write_text(folder.parent / "config.pbtxt", to_pbtxt(config) + "\n")
    (tmp / name / "1").mkdir(parents=True)
    config = ensemble_config(name, int(entry["max_batch"]), io, document)
    atomic_write_text(tmp / name / "config.pbtxt", to_pbtxt(config) + "\n")
    atomic_write_json(tmp / name / MANIFEST_FILE, document)


def _swap(tmp: Path, out: Path) -> None:
    """The new repository in place of out in one rename (an old one is moved aside first, then removed)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists() and any(out.iterdir()):
        out.rename(old)
    elif out.exists():
        out.rmdir()
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
