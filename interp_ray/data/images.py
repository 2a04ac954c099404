"""Image decoding shared by every file-backed loader and the HTTP service: bytes or a file → float32 C×H×W in [0, 1].

One place decides how pixels are made (PIL decode, convert to RGB or L, bilinear resize, scale to [0, 1]), so a
model sees the same pixels whether an image came from CUB, an image folder, a Parquet file or an upload.
``pixels=True`` stops before the scaling: uint8 C×H×W, what a loading stage ships to the model's process (a quarter
of float32's bytes); ``to_unit_float`` scales it there to the very same float32 values.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

from interp_ray.errors import UserError

# PIL modes we produce, with their channel counts.
MODES: dict[str, int] = {"RGB": 3, "L": 1}
# torchvision's ImageFolder set, so a folder that works there works here.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Size = int | tuple[int, int]  # an int is a square side; a pair is (height, width)


def channels_for(mode: str) -> int:
    """Channels of ``mode``; an unknown mode is a UserError listing the valid ones."""
    if mode not in MODES:
        raise UserError(f"unknown image mode {mode!r}; valid: {', '.join(MODES)}")
    return MODES[mode]


def as_hw(size: Size | None) -> tuple[int, int] | None:
    """``size`` as (height, width); None stays None (keep the decoded size)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise UserError(f"image size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def open_image(source: bytes | str | os.PathLike, *, name: str | None = None):
    """A fully decoded PIL image from bytes or a path; anything PIL cannot decode is a UserError.

    ``name`` (default: the path) prefixes the message so the user knows which file or row to fix.
    The image is loaded here, not lazily, so truncated data fails now rather than inside a later resize.
    """
    from PIL import Image, UnidentifiedImageError

    if name is None and not isinstance(source, bytes):
        name = os.fspath(source)
    prefix = f"{name}: " if name else ""
    if isinstance(source, bytes) and not source:
        raise UserError(f"{prefix}not a decodable image (empty)")
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        img.load()
    except FileNotFoundError:
        raise UserError(f"{prefix}image file not found") from None
    except UnidentifiedImageError:  # its message only repeats the file object's repr
        raise UserError(f"{prefix}not a decodable image") from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{prefix}image too large to decode ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise UserError(f"{prefix}not a decodable image ({exc})") from None
    return img


def image_to_array(img, size: Size | None = None, mode: str = "RGB", *, pixels: bool = False) -> np.ndarray:
    """A PIL image → float32 C×H×W in [0, 1] (``pixels``: uint8 0..255): convert to ``mode``, then bilinear resize to
    ``size``."""
    from PIL import Image

    channels = channels_for(mode)
    hw = as_hw(size)
    if img.mode != mode:
        img = img.convert(mode)
    if hw is not None and img.size != (hw[1], hw[0]):
        img = img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)  # PIL takes (width, height)
    arr = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        arr = arr[None, :, :]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr) if pixels else to_unit_float(arr)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels → a new float32 array in [0, 1]: exactly the values ``image_to_array`` gives."""
    return pixels.astype(np.float32) / 255.0


def unit_float_table() -> np.ndarray:
    """The 256 float32 values of ``to_unit_float``: a lookup table, so a device scales uint8 pixels by indexing and
    gets the very same values (a GPU may divide by multiplying with 1/255, which differs in the last bit)."""
    return to_unit_float(np.arange(256, dtype=np.uint8))


def decode_image(data: bytes, size: Size | None = None, mode: str = "RGB", *, name: str | None = None,
                 pixels: bool = False) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, …) → float32 C×H×W in [0, 1] (``pixels``: uint8); bad bytes →
    UserError("not a decodable image")."""
    channels_for(mode)  # a bad mode is the caller's error, report it before touching the bytes
    return image_to_array(open_image(bytes(data), name=name), size, mode, pixels=pixels)


def read_image_file(path: str | os.PathLike, size: Size | None = None, mode: str = "RGB", *,
                    pixels: bool = False) -> np.ndarray:
    """An image file → float32 C×H×W in [0, 1] (``pixels``: uint8); an unreadable file is a UserError naming it."""
    channels_for(mode)
    return image_to_array(open_image(path), size, mode, pixels=pixels)


def stack_images(images: Sequence[np.ndarray], names: Sequence[str], image_shape: tuple[int, int, int], *,
                 pixels: bool = False) -> np.ndarray:
    """Decoded images → one N×C×H×W array; an image not of ``image_shape`` is a UserError naming it.

    Checking against the dataset's shape (not just the batch's first image) keeps every batch the same shape.
    """
    for arr, name in zip(images, names):
        if tuple(arr.shape) != tuple(image_shape):
            raise UserError(f"{name}: image is {arr.shape[2]}×{arr.shape[1]} but this dataset's images are "
                            f"{image_shape[2]}×{image_shape[1]}; pass image_size to resize every image to one size")
    if not images:
        return np.zeros((0, *image_shape), dtype=np.uint8 if pixels else np.float32)
    return np.stack(images)  # float32 images stay float32, uint8 pixels uint8


def has_image_extension(filename: str, extensions: Sequence[str]) -> bool:
    """Case-insensitive suffix test, as torchvision does it."""
    return filename.lower().endswith(tuple(e.lower() for e in extensions))
