"""edgead: dual-model knowledge-distillation anomaly detection for factory cameras."""

__version__ = "0.1.0"
