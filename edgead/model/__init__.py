"""The model stage: the dual knowledge-distillation detector, how it is built, and how it is stored.

- config.py: the typed model config read from YAML (presets, validation);
- kd.py: teacher/student pairs, the distillation loss and the scoring head (`DualKD`);
- backbones.py: one entry point that builds any backbone truncated and returns its feature maps;
- resnet.py: ResNet18 and the reduced student, key-for-key compatible with torchvision;
- efficientnet.py: EfficientNet-B0 and Lite0/1/2, loading either checkpoint naming scheme;
- weights.py: finding, hash-checking and reading pretrained checkpoints, offline first;
- artifact.py: the `models/<name>/` folder (config.yaml, students.pt, metadata.json).

This stage imports torch: it runs where models are trained and exported (export and the torch
reference backend import it; the edge path does not). No code here: importing one module loads
only what that module needs.
"""
