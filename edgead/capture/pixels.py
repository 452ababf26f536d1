"""Raw camera buffers into Frame images, and the one table of pixel formats edgead can convert.

The names `camera.pixel_format` accepts (config.py) and the buffers the GigE and GenTL sources can
turn into images come from this single table, so a format cannot be accepted in the YAML and then
fail on the first frame. Edge path: numpy + OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgead.errors import EdgeADError


def _bayer(new: str, old: str) -> int:
    """OpenCV's Bayer code for a GenICam pattern (named after its top-left 2x2 cell).

    OpenCV's classic names are shifted by one: GenICam BayerRG8 (R at the top-left) is
    COLOR_BayerBG2RGB there, and COLOR_BayerRG2RGB swaps red and blue. Newer builds add
    unambiguous names (COLOR_BayerRGGB2RGB, equal to the classic BG code); use them when present.
    tests/capture/test_capture.py checks every pattern on a synthetic mosaic.
    """
    return int(getattr(cv2, new, getattr(cv2, old)))


@dataclass(frozen=True)
class PixelFormat:
    channels: int                      # values per pixel in the raw buffer
    dtype: type                        # numpy dtype of one value
    convert: int | None = None         # cv2.cvtColor code to RGB (or None: already gray/RGB)


PIXEL_FORMATS: dict[str, PixelFormat] = {
    "Mono8": PixelFormat(1, np.uint8),
    "Mono16": PixelFormat(1, np.uint16),
    "RGB8": PixelFormat(3, np.uint8),
    "BGR8": PixelFormat(3, np.uint8, cv2.COLOR_BGR2RGB),
    "RGBa8": PixelFormat(4, np.uint8, cv2.COLOR_RGBA2RGB),
    "BGRa8": PixelFormat(4, np.uint8, cv2.COLOR_BGRA2RGB),
    "BayerRG8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerRGGB2RGB", "COLOR_BayerBG2RGB")),
    "BayerGR8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerGRBG2RGB", "COLOR_BayerGB2RGB")),
    "BayerGB8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerGBRG2RGB", "COLOR_BayerGR2RGB")),
    "BayerBG8": PixelFormat(1, np.uint8, _bayer("COLOR_BayerBGGR2RGB", "COLOR_BayerRG2RGB")),
}


def to_image(data: bytes | np.ndarray, width: int, height: int, pixel_format: str,
             stride: int | None = None) -> np.ndarray:
    """Turn one raw camera buffer into a Frame image: HxW gray or HxWx3 RGB, always a fresh array.

    `stride` is the bytes per row when rows are padded (default: packed rows); bytes past the
    last row (chunk data) are ignored.
    """
    fmt = PIXEL_FORMATS.get(pixel_format)
    if fmt is None:
        raise EdgeADError(f"camera delivers pixel format {pixel_format}, which edgead cannot convert",
                          f"set camera.pixel_format to one of: {', '.join(PIXEL_FORMATS)}")
    flat = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data).reshape(-1).view(np.uint8)
    row = width * fmt.channels * np.dtype(fmt.dtype).itemsize
    stride = stride or row
    if width <= 0 or height <= 0 or stride < row or flat.size < stride * (height - 1) + row:
        raise EdgeADError(f"camera buffer too short: {flat.size} bytes for {width}x{height} {pixel_format}",
                          "the frame arrived incomplete; check the network (packet size, jumbo frames)")
    rows = np.lib.stride_tricks.as_strided(flat, shape=(height, row), strides=(stride, 1))
    shape = (height, width, fmt.channels) if fmt.channels > 1 else (height, width)
    img: np.ndarray = rows.view(fmt.dtype).reshape(shape)
    if fmt.convert is not None:
        return cv2.cvtColor(np.ascontiguousarray(img), fmt.convert)
    return np.array(img, copy=True)       # never a view into a buffer the camera will reuse
