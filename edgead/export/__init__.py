"""The export stage: ONNX graphs (onnx), their graph passes (onnx_passes), `edgead build-engine`
(build) and the TensorRT builder (tensorrt_build).

This stage may import torch (the ONNX export runs on the workstation); `build-engine --engine` and
the TensorRT builder import none, so they also run on the device. Export imports edgead.backends,
never the other way round.
"""
