"""The data stage: images and data sets on disk, read the same way by training, calibration and the run.

- images.py: reading one image or a folder of images, with errors an operator can act on;
- mvtec.py: data sets in the MVTec AD layout (train/good, test/<type>, ground_truth masks);
- synth.py: synthetic products written in that layout, so demos and tests need no download.

Edge path: numpy and OpenCV only, never torch (decide and capture import it on the inspection
box); synth.py's brick photo needs scikit-image, imported only when a brick is rendered. No code
here: importing one module loads only what that module needs.
"""
