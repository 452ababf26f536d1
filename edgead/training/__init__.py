"""The training stage: `edgead train` and `edgead eval`, from good images to a scored model artifact.

- train.py: the training loop (best epoch kept, resumable checkpoint);
- batches.py: mini-batches over cached teacher features;
- statistics.py: what the model learns from good images after training (map and score statistics);
- evaluate.py: scoring an MVTec-layout test split into a JSON report and figures;
- metrics.py: AUROC, pixel AUROC, AUPRO and F1 in plain numpy;
- figures.py: ROC curves, score histograms and heat-map grids (PNG; the overlay itself is
  edgead.runtime.overlay, shared with the line);
- device.py: picking the torch device;
- input_size.py: the input size from the training images (their aspect at the preset's pixel count);

This stage may import torch (train, batches, statistics, evaluate, device); metrics.py and
figures.py happen not to, so `edgead eval` figures can be drawn without it.
"""
