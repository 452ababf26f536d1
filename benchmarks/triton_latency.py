"""A served model against the same engine run locally: what a central Triton server costs per part.

    EDGEAD_TRITON_HOME=DIR python benchmarks/triton_latency.py --engine engines/washer --out bench-out/triton

The engine folder is exported with `write_triton_repository` (CPU instances), served by a real Triton
Inference Server (the binaries of nvidia-pytriton in EDGEAD_TRITON_HOME, the stand-in of
tests/triton_fixtures.py: the exported ensemble and configs as they are, the teacher and student run
by the python backend with ONNX Runtime) on loopback, on the same 2 cores as the client. Timed with
`edgead.backends.bench.time_interleaved` (every detector once per round, rotating order, medians):
the local ONNX Runtime FP32 engine, the served model over gRPC, and over gRPC with system shared
memory. Also the bytes one part puts on the wire (the preprocessed float32 input). Writes
results.json and table.md to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from triton_fixtures import TritonServer, backend_dir, standin_copy, triton_home  # noqa: E402

from edgead.backends import load_detector  # noqa: E402
from edgead.backends.bench import time_interleaved  # noqa: E402
from edgead.backends.manifest import engine_preprocessing  # noqa: E402
from edgead.export.triton_repo import write_triton_repository  # noqa: E402

MODEL = "served"


def measure(engine: Path, iters: int, batches: list[int], work: Path) -> dict:
    home = triton_home()
    if home is None:
        raise SystemExit("set EDGEAD_TRITON_HOME to a `pip install --no-deps --target DIR nvidia-pytriton numpy<2` "
                         "folder (.ci/run makes one)")
    repo = write_triton_repository(engine, work / "repo", name=MODEL, precision="fp32", device="cpu",
                                   backend="onnxruntime")
    server = TritonServer(home, standin_copy(repo, work / "standin"), backend_dir(home, work / "backends"),
                          work / "triton.log")
    server.start([MODEL])
    try:
        url = f"triton://127.0.0.1:{server.grpc_port}/{MODEL}"
        dets = {"local onnxruntime/fp32": load_detector(engine, "onnxruntime", "fp32"),
                "triton gRPC": load_detector(url), "triton gRPC + shm": load_detector(url + "?shm=system")}
        spec = engine_preprocessing(engine)
        rows = {}
        for b in batches:
            rows[b] = time_interleaved(dets, spec, b, iters, warmup=5, frame_hw=(spec.height, spec.width),
                                       include_preprocess=False)
        for det in dets.values():
            close = getattr(det, "close", None)
            if callable(close):
                close()
        return {"rows": rows, "input_bytes_per_part": 4 * 3 * spec.height * spec.width,
                "input": [3, spec.height, spec.width]}
    finally:
        server.stop()


def table(result: dict) -> str:
    lines = ["| detector | batch | p50 ms | p99 ms | images/s | x local |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for b, row in result["rows"].items():
        ref = row["local onnxruntime/fp32"]["p50_ms"]
        for name, r in row.items():
            lines.append(f"| {name} | {b} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['images_per_s']:.1f} | "
                         f"{r['p50_ms'] / ref:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, help="engine folder (its ONNX Runtime FP32 graphs are served)")
    ap.add_argument("--out", default="bench-out/triton")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgead-triton-bench-") as work:
        result = measure(Path(args.engine), args.iters, args.batch or [1, 8], Path(work))
    result.update(engine=str(args.engine), machine=platform.processor() or platform.machine(), iters=args.iters)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(table(result))
    print(table(result))
    print(f"input on the wire per part: {result['input_bytes_per_part'] / 1024:.0f} KiB (float32 {result['input']})")


if __name__ == "__main__":
    main()
