"""A station's engines: one per distinct engine (folder, backend, precision, threads, remote detector),
shared by the cameras that use it, its memory reported at start and held to `memory_budget_mb`.

Memory per engine is reported two ways, both honest about what they are: the size of its ONNX files
(a floor: the weights must be somewhere) and the growth of this process's resident memory while it
was opened (the first engine also pays for loading its runtime library; GPU memory of a TensorRT
engine is not in it). The budget is held against the larger of the two per engine: before anything
opens (the files alone already too big) and after each engine opens.

No torch here (edge path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgead.errors import EdgeADError
from edgead.protocols import Detector
from edgead.runtime.config import RunConfig
from edgead.runtime.run import _engine
from edgead.runtime.shared_detector import SharedDetector
from edgead.runtime.station_config import StationConfig, with_camera

MB = 1e6
Opener = Callable[[RunConfig], Detector]     # tests and embedding: the detector for a camera's config


@dataclass
class Engine:
    key: Tuple[Any, ...]
    label: str
    cameras: List[str]
    onnx_bytes: int
    rss_bytes: Optional[int] = None
    shared: Optional[SharedDetector] = None
    detail: Dict[str, Any] = field(default_factory=dict)

    @property
    def need_bytes(self) -> int:
        return max(self.onnx_bytes, self.rss_bytes or 0)

    def status(self) -> Dict[str, Any]:
        """For /health and /metrics: who shares it, its memory, how its batches went."""
        s = self.shared
        return {"engine": self.label, "cameras": list(self.cameras), "onnx_bytes": self.onnx_bytes,
                "rss_bytes": self.rss_bytes, "batches": s.batches if s else 0, "frames": s.rows if s else 0,
                "frames_per_batch": round(s.rows / s.batches, 3) if s and s.batches else None}


def engine_key(cfg: RunConfig) -> Tuple[Any, ...]:
    """Cameras with the same key share one engine (and its batches)."""
    return (str(Path(str(cfg.engine)).expanduser().resolve()), cfg.backend, cfg.precision, cfg.threads,
            getattr(cfg, "detector", None))


def rss_bytes() -> Optional[int]:
    """This process's resident memory now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def onnx_bytes(engine: str) -> int:
    """The ONNX graphs' size in the engine folder (0 for a served model: its memory is the server's)."""
    folder = Path(engine).expanduser()
    return sum(p.stat().st_size for p in folder.rglob("*.onnx") if p.is_file()) if folder.is_dir() else 0


def plan_engines(station: StationConfig) -> List[Engine]:
    """The distinct engines and the cameras of each, in the order the cameras are listed."""
    engines: Dict[Tuple[Any, ...], Engine] = {}
    for cam in station.cameras:
        key = engine_key(cam.cfg)
        if key not in engines:
            name = Path(str(cam.cfg.engine)).name
            engines[key] = Engine(key, name, [], onnx_bytes(str(cam.cfg.engine)))
        engines[key].cameras.append(cam.name)
    labels = [e.label for e in engines.values()]
    for e in engines.values():          # one folder opened two ways: say which is which
        if labels.count(e.label) > 1:
            e.label = f"{e.label}:{e.key[1]}/{e.key[2] or 'default'}" + (f"/{e.key[3]}t" if e.key[3] else "")
    return list(engines.values())


def _refuse(budget_mb: float, engines: List[Engine], when: str) -> EdgeADError:
    parts = ", ".join(f"{e.label} {e.need_bytes / MB:.0f} MB" for e in engines)
    total = sum(e.need_bytes for e in engines) / MB
    return EdgeADError(f"the engines need about {total:.0f} MB {when} ({parts}), over memory_budget_mb "
                       f"{budget_mb:g}: not starting",
                       "raise memory_budget_mb if the box has the room, run fewer products on this box, or use "
                       "smaller engines (a lighter preset, fp16 or int8)")


def open_engines(station: StationConfig, force: bool, log: Callable[[str], None],
                 opener: Optional[Opener] = None) -> List[Engine]:
    """Open each engine once (through the run's own `_engine`, so every backend opens as in `edgead run`),
    report its memory, refuse past the budget. On an error the engines already open are closed."""
    engines = plan_engines(station)
    budget = station.memory_budget_mb
    if budget is not None and sum(e.onnx_bytes for e in engines) > budget * MB:
        raise _refuse(budget, engines, "in ONNX files alone")
    opened: List[Engine] = []
    try:
        for e in engines:
            cfg = next(c.cfg for c in station.cameras if c.name == e.cameras[0])
            before = rss_bytes()
            given = opener(cfg) if opener is not None else None
            detector = with_camera(e.cameras[0], lambda: _engine(cfg, given, force, lambda s: None, [])[0])
            after = rss_bytes()
            e.rss_bytes = None if before is None or after is None else max(0, after - before)
            e.shared = SharedDetector(detector, station.batch_window_ms / 1000.0, e.label, owns=given is None)
            opened.append(e)
            log(f"engine {e.label} ({detector.backend}/{detector.precision}) for camera"
                f"{'s' if len(e.cameras) > 1 else ''} {', '.join(e.cameras)}: ONNX files {e.onnx_bytes / MB:.1f} MB, "
                + ("process memory not readable here" if e.rss_bytes is None else
                   f"process memory +{e.rss_bytes / MB:.1f} MB while opening"))
            if budget is not None and sum(o.need_bytes for o in opened) > budget * MB:
                raise _refuse(budget, opened, "once opened")
    except BaseException:
        close_engines(opened)
        raise
    if budget is not None:
        log(f"engines: about {sum(e.need_bytes for e in engines) / MB:.0f} MB of memory_budget_mb {budget:g}")
    return engines


def close_engines(engines: List[Engine]) -> None:
    for e in engines:
        if e.shared is not None:
            e.shared.close()
