"""Resizing a window of a decoded image inside FFCV's compiled pipeline.

FFCV's `resize_crop` always uses OpenCV's INTER_AREA, whose general (non-integer) path costs
about as much as decoding the JPEG itself (about 0.9 ms for a 328 px window to 224 on this
CPU, against 0.09 ms for INTER_LINEAR). Once the JPEG has been decoded at a reduced DCT
scale (libjpeg-turbo's M/8 scaling, an exact low-pass of the image), what is left to shrink
is less than 2x, where bilinear interpolation sees every source pixel; INTER_AREA stays for
larger factors. OpenCV's C entry points `cvResize` and `cvFlip` (exported by the very
OpenCV libraries that FFCV's library links) take CvMat headers, which we build in a small
int64 array, so the calls compile with numba like FFCV's own ctypes calls.
"""

from __future__ import annotations

import vggcli.data.numba_cache  # noqa: F401  (before FFCV: see there)

# isort: split

import ctypes

import ffcv._libffcv
import numpy as np
from numba import njit

from vggcli.errors import VggError

INTER_LINEAR, INTER_AREA = 1, 3
# CvMat (OpenCV 4, types_c.h): int type, int step, int* refcount, int hdr_refcount,
# uchar* data, int rows, int cols: five 8-byte words on a 64-bit machine
_CV_MAT_8UC3 = 0x42420000 | 16  # CV_MAT_MAGIC_VAL | CV_8UC3

# a handle of our own on FFCV's library (the same OpenCV), so FFCV's function pointers keep
# the signatures FFCV gave them
_opencv = ctypes.CDLL(ffcv._libffcv.__file__)
try:
    _cv_resize = _opencv.cvResize  # (src, dst, interpolation)
    _cv_flip = _opencv.cvFlip  # (src, dst or NULL for in place, mode: 1 mirrors left-right)
except AttributeError:
    raise VggError(
        "the OpenCV that FFCV was built against has no C API (cvResize, cvFlip: OpenCV 5 "
        "dropped it); install OpenCV 4 (Debian's libopencv-dev) and reinstall ffcv"
    ) from None
for _function in (_cv_resize, _cv_flip):
    _function.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int32]
    _function.restype = None


@njit(inline="always")
def _header(words: np.ndarray, address: int, rows: int, cols: int, step: int) -> None:
    """A CvMat header for an 8-bit RGB view: `rows` x `cols` pixels at `address`."""
    words[0] = np.int64(_CV_MAT_8UC3) | (np.int64(step) << np.int64(32))
    words[1] = 0  # no reference count: OpenCV never frees our buffers
    words[2] = 0
    words[3] = address
    words[4] = np.int64(rows) | (np.int64(cols) << np.int64(32))


@njit
def resize_window(
    image: np.ndarray, top: int, left: int, rows: int, cols: int, out: np.ndarray, linear: bool
) -> None:
    """Resize the window (top, left, rows, cols) of `image` (H, W, 3, C-contiguous) into
    `out` (crop, crop, 3): bilinear when `linear`, else INTER_AREA. Through cvResize because
    FFCV's own `resize_crop` knows only INTER_AREA; the window is a view (no copy)."""
    width = image.shape[1]
    words = np.empty(10, dtype=np.int64)
    source, destination = words[:5], words[5:]
    _header(source, image.ctypes.data + (top * width + left) * 3, rows, cols, width * 3)
    _header(destination, out.ctypes.data, out.shape[0], out.shape[1], out.shape[1] * 3)
    _cv_resize(source.ctypes.data, destination.ctypes.data, INTER_LINEAR if linear else INTER_AREA)


@njit
def mirror(image: np.ndarray) -> None:
    """Mirror an (H, W, 3) C-contiguous image left-right in place (OpenCV's SIMD flip:
    half the time of a compiled loop)."""
    words = np.empty(5, dtype=np.int64)
    _header(words, image.ctypes.data, image.shape[0], image.shape[1], image.shape[1] * 3)
    _cv_flip(words.ctypes.data, 0, 1)
