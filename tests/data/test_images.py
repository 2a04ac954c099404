"""The shared decoder: real PNG/JPEG bytes → float32 C×H×W in [0, 1], and clear errors for bad input."""

import io

import numpy as np
import pytest
from PIL import Image

from interp_ray.data.images import decode_image, has_image_extension, read_image_file, stack_images
from interp_ray.errors import UserError

JPEG_TOL = 4 / 255


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_decodes_exactly_to_chw_floats():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2  # H=4, W=6, distinct values
    out = decode_image(encode(Image.fromarray(pixels, "RGB"), "PNG"))
    assert out.dtype == np.float32 and out.shape == (3, 4, 6)
    np.testing.assert_array_equal(out, pixels.transpose(2, 0, 1) / np.float32(255))


def test_solid_jpeg_keeps_its_colour_through_resize():
    colour = (200, 30, 90)
    data = encode(Image.new("RGB", (40, 20), colour), "JPEG", quality=95)
    out = decode_image(data, size=8)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out, np.broadcast_to(np.array(colour)[:, None, None] / 255, out.shape), atol=JPEG_TOL)


def test_size_pair_is_height_width_and_modes_convert():
    data = encode(Image.new("RGB", (10, 10), (255, 255, 255)), "PNG")
    assert decode_image(data, size=(3, 5)).shape == (3, 3, 5)
    grey = decode_image(data, mode="L")
    assert grey.shape == (1, 10, 10) and np.allclose(grey, 1.0)
    rgb_from_grey = decode_image(encode(Image.new("L", (2, 2), 51), "PNG"))
    assert rgb_from_grey.shape == (3, 2, 2) and np.allclose(rgb_from_grey, 0.2)


@pytest.mark.parametrize("data", [b"", b"not an image at all", encode(Image.new("RGB", (64, 64)), "PNG")[:60]])
def test_bad_bytes_are_a_user_error(data):
    with pytest.raises(UserError, match="not a decodable image"):
        decode_image(data)


def test_bad_mode_and_size_are_user_errors():
    data = encode(Image.new("RGB", (2, 2)), "PNG")
    with pytest.raises(UserError, match="valid: RGB, L"):
        decode_image(data, mode="CMYK")
    with pytest.raises(UserError, match="positive"):
        decode_image(data, size=0)


def test_read_image_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="broken.png: not a decodable image"):
        read_image_file(bad)
    with pytest.raises(UserError, match="missing.png: image file not found"):
        read_image_file(tmp_path / "missing.png")


def test_stack_images_checks_every_shape():
    a, b = np.zeros((3, 2, 2), np.float32), np.zeros((3, 4, 4), np.float32)
    assert stack_images([a, a], ["a", "b"], (3, 2, 2)).shape == (2, 3, 2, 2)
    assert stack_images([], [], (3, 2, 2)).shape == (0, 3, 2, 2)
    with pytest.raises(UserError, match="b: image is 4×4 .* pass image_size"):
        stack_images([a, b], ["a", "b"], (3, 2, 2))


def test_extension_match_ignores_case():
    assert has_image_extension("X.JPG", (".jpg",)) and not has_image_extension("x.txt", (".jpg", ".png"))
