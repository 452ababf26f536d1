"""Can a calibration record be trusted: its digest, and its threshold against its own score statistics.

The record decides pass/reject on every part, so a hand edit (`threshold: 1e9` passes everything,
`-1` rejects everything) must not go unnoticed. `write_record` stores a sha256 over the canonical
JSON of every field except where things are (the engine's path and name, the image folders: they
change when folders move from the workstation to the line box, and decide nothing). `read_calibration`
recomputes it. `problems` also holds the deciding threshold against the good-score statistics the
record carries (`thresholds.implausible`), so a record that is internally consistent but absurd is
refused too. Both are what `--force` lets through, loudly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edgead.decide import thresholds as T

DIGEST_PREFIX = "sha256:"
# Fields outside the digest: where the engine and the images are, not what is decided.
LOCATION_FIELDS: dict[str, tuple[str, ...]] = {"engine": ("path", "name"), "good": ("folder",),
                                              "defects": ("folder",)}
_NOT_IN_FILE = ("digest", "forced", "forced_reason")  # the digest itself; what reading adds


def record_digest(rec: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the record without its location fields."""
    body = {k: v for k, v in rec.items() if k not in _NOT_IN_FILE}
    for block, keys in LOCATION_FIELDS.items():
        if isinstance(body.get(block), dict):
            body[block] = {k: v for k, v in body[block].items() if k not in keys}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=str)
    return DIGEST_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def deciding(rec: dict[str, Any]) -> tuple[str, float, dict[str, Any] | None, dict[str, Any]]:
    """(name, threshold, its good-score statistics, the block holding its promise) of the rule that decides."""
    area = rec["area"]
    if area is not None:
        return "area.pixel_threshold", float(area["pixel_threshold"]), rec["good"]["area_scores"], area
    return "threshold", float(rec["threshold"]), rec["good"]["scores"], rec


def implausible(rec: dict[str, Any]) -> list[str]:
    """The deciding threshold's conflicts with the record's own good-score statistics (none: [])."""
    name, t, stats, block = deciding(rec)
    if not stats:
        return []
    found = T.implausible(t, stats, float(rec["target_frr"]), float(block["expected_frr"]),
                          block["expected_frr_interval"])
    return [f"'{name}': {f}" for f in found]
