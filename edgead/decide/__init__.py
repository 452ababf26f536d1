"""The decide stage: turn an engine's scores into pass/reject, and keep that decision trustworthy.

`edgead calibrate` scores good (and defective) parts and picks the reject threshold for a target
false-reject rate (`calibrate`, maths in `thresholds`); the record it writes (`record`, with its
figure, `figure`) is what the run loop applies with `record.decide`; `drift` re-checks it on fresh
good parts. Edge path: numpy, SciPy, OpenCV and PyYAML only (no torch, no matplotlib).
"""
