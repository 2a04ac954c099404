"""The blur shared by GFI, occlusion and deletion/insertion, against a direct 2-D convolution in numpy."""

import numpy as np
import torch

from interp_ray.imageops import gaussian_blur, paper_blur, paper_blur_sigma


def direct_blur(img: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """H×W blurred with the full (not separable) Gaussian kernel over a reflect-padded copy."""
    t = np.arange(-radius, radius + 1)
    k1 = np.exp(-0.5 * (t / sigma) ** 2)
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    padded = np.pad(img, radius, mode="reflect")
    h, w = img.shape
    return np.array([[(padded[i:i + 2 * radius + 1, j:j + 2 * radius + 1] * k2).sum() for j in range(w)]
                     for i in range(h)])


def test_blur_equals_the_direct_convolution_per_channel():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 12, 10))
    got = gaussian_blur(torch.from_numpy(x), 1.3).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], direct_blur(x[n, c], 1.3, radius=4), atol=1e-12)


def test_a_constant_image_stays_constant_up_to_its_border():
    x = torch.full((1, 1, 9, 9), 0.7, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(x, 2.0), x)   # reflect padding: no dark frame


def test_an_image_one_pixel_high_is_returned_as_a_copy():
    x = torch.rand(1, 1, 1, 5)   # nothing to reflect: the radius shrinks to 0
    y = gaussian_blur(x, 2.0)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_paper_blur_scales_11_px_at_224_with_the_width():
    assert paper_blur_sigma(224) == 11.0 and abs(paper_blur_sigma(64) - 11.0 * 64 / 224) < 1e-12
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(paper_blur(x), gaussian_blur(x, 11.0 * 32 / 224))
