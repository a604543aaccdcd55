"""PIL images -> uint8 tensors: the decoding shared by the lazily decoded sources.

Every image becomes RGB, squared by a center crop of its short side and resized (bilinear) to
``image_size``, as the contract in :mod:`sslbench.datasets.base` asks.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor


def to_rgb_square(img: Image.Image, image_size: int) -> np.ndarray:
    """Convert a PIL image to RGB, center-crop it square and resize it.

    Args:
        img: Any-mode PIL image (L, LA, P, RGBA, CMYK, I;16, ...).
        image_size: Output side length.

    Returns:
        uint8 array [image_size, image_size, 3].
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # high bit depth greyscale
        arr = np.asarray(img, dtype=np.float64)
        if arr.max() > 255:
            arr = arr * (255.0 / (65535.0 if arr.max() <= 65535 else arr.max()))
        img = Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def as_pil(value: Any) -> Image.Image:
    """Turn an HF image cell (PIL image, ``{"bytes", "path"}`` dict or array) into PIL."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = (arr * 255 if arr.dtype.kind == "f" and arr.max() <= 1.0 else arr)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def stack_images(arrays: list[np.ndarray], image_size: int) -> Tensor:
    """(H, W, 3) uint8 arrays -> one (N, 3, H, W) uint8 tensor (empty list: N = 0)."""
    if not arrays:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def index_list(indices: Sequence[int] | Tensor) -> list[int]:
    """Batch indices (a sequence or a tensor of any shape) as a flat list of ints."""
    if isinstance(indices, Tensor):
        return [int(i) for i in indices.reshape(-1).tolist()]
    return [int(i) for i in indices]
