"""Common image corruptions (Hendrycks & Dietterich, ICLR 2019: ImageNet-C / CIFAR-10-C), on the fly.

`003` §4.3 tests models trained on clean data on corrupted test images, "the different
perturbation modes proposed by Hendrycks et al. [15] [...] five levels of severity", with "the
original code from https://github.com/hendrycks/robustness" (`003` A3.1). That code works on one
PIL image at a time through OpenCV, scikit-image, scipy and ImageMagick (Wand); here the same
corruptions are written in torch / torchvision on batches ``(N, C, H, W)`` of images in [0, 1]
with 1 (grayscale) or 3 (RGB) channels, and every random draw comes from a ``torch.Generator``,
so a corrupted test set is the same on every call with the same seed (for the MTL and the STL
model alike) and is never stored.

Severity constants: those of ``make_imagenet_c.py`` / ``imagenet_c/corruptions.py`` (``imagenet``,
what `003` ran on Cityscapes 128x256 and NYUv2 288x384) or of ``make_cifar_c.py`` (``cifar``, for
32x32 images); ``table="auto"`` takes ``cifar`` for images whose shorter side is below 100 pixels
(Multi-MNIST's 28x28), whose digits the ImageNet blurs (disk radius up to 10 px) would erase.

Deviations from the reference code, each named where it happens:

- frost is left out: it blends photographs of frost (frost1.png ... frost6.jpg) that the
  reference ships and this package does not; ``CORRUPTIONS`` has the other 14.
- glass_blur: the reference swaps pixels one at a time in a Python loop (order-dependent); here
  every pixel takes the value of a random neighbour within the same ``max_delta`` (a gather), the
  same local shuffle in distribution, vectorised.
- motion_blur (and snow's motion-blurred layer): ImageMagick's ``MotionBlurImage(radius, sigma,
  angle)`` is approximated by a one-sided line kernel of ``radius + 1`` taps with Gaussian weights
  ``exp(-k²/2σ²)`` along ``angle``, splatted bilinearly.
- pixelate: PIL's BOX down-sampling is ``area`` interpolation; PIL's BOX up-sampling is nearest.
- elastic: the smoothing of the displacement field uses a Gaussian kernel of at most the image's
  size (the ImageNet sigmas, 0.7 x 244 px, are wider than the images here; beyond the image the
  field is nearly constant anyway); sizes scale with the shorter side instead of 224 / 32.
- zoom_blur and snow's ``clipped_zoom`` zoom non-square images by the same factor in both axes
  (the reference assumes square images).
- brightness: HSV's V + c with H and S kept is ``x · V'/V`` per pixel (V = max over channels), the
  same as skimage's rgb2hsv/hsv2rgb round trip without it; for one channel V is the pixel.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional as TF

from trainables.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
TABLES = ("auto", "imagenet", "cifar")
#: Images whose shorter side is below this take the CIFAR-10-C constants with ``table="auto"``.
SMALL_IMAGE = 100

# Severity constants, s = 1..5, as hendrycks/robustness ImageNet-C/imagenet_c/imagenet_c/corruptions.py
# ("imagenet") and ImageNet-C/create_c/make_cifar_c.py ("cifar").
CONSTANTS: dict[str, dict[str, list]] = {
    "imagenet": {
        "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [.03, .06, .09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
        "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
        "brightness": [.1, .2, .3, .4, .5],
        "contrast": [0.4, .3, .2, .1, .05],
        # fractions of the image size (the reference: 244 x these, for 224-pixel images)
        "elastic_transform": [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
    "cifar": {
        "gaussian_noise": [0.04, 0.06, .08, .09, .10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [.01, .02, .03, .05, .07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        "zoom_blur": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [.05, .1, .15, .2, .3],
        "contrast": [.75, .5, .4, .3, 0.15],
        # fractions of the image size (the reference: 32 x these)
        "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
}


# ------------------------------------------------------------------ helpers
def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=g).to(device) * (high - low) + low


def _depthwise(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each image of ``x`` (N, C, H, W) with its own kernel (N, k, k) (or one (k, k) for all),
    every channel alike, reflect padding (OpenCV's default border, BORDER_REFLECT_101)."""
    n, c, h, w = x.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(n, *kernels.shape)
    k = kernels.shape[-1]
    pad = k // 2
    if pad >= min(h, w):  # reflect needs pad < size: trim the kernel's (near-zero) rim
        cut = pad - (min(h, w) - 1)
        kernels = kernels[:, cut:k - cut, cut:k - cut]
        kernels = kernels / kernels.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
        k, pad = kernels.shape[-1], kernels.shape[-1] // 2
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, k, k)
    padded = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def _gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian (truncate 4 sigma), reflect borders."""
    if sigma <= 0:
        return x
    radius = int(truncate * sigma + 0.5)
    radius = min(radius, min(x.shape[-2:]) - 1)
    return TF.gaussian_blur(x, [2 * radius + 1, 2 * radius + 1], [sigma, sigma])


def _smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing (truncate 3, as the reference's elastic field) of a wide sigma done on a
    coarser grid: the mean over f x f blocks blurred with sigma / f and zoomed back is the same
    smooth field (f = sigma / 4), at a fraction of the cost of a kernel as wide as the image."""
    factor = int(sigma // 4)
    h, w = field.shape[-2:]
    if factor < 2 or min(h, w) // factor < 2:
        return _gaussian_blur(field, sigma, truncate=3.0)
    coarse = F.avg_pool2d(field, factor, ceil_mode=True)
    coarse = _gaussian_blur(coarse, sigma / factor, truncate=3.0)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's anti-aliased disk kernel (``disk``: 17x17 up to radius 8, then GaussianBlur)."""
    half = 8 if radius <= 8 else int(radius)
    ksize = 3 if radius <= 8 else 5
    coords = torch.arange(-half, half + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kernel = ((xx ** 2 + yy ** 2) <= radius ** 2).float()
    kernel /= kernel.sum()
    return TF.gaussian_blur(kernel[None, None], [ksize, ksize], [alias_blur, alias_blur])[0, 0]


def _motion_kernels(radius: float, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """One-sided Gaussian line kernels (ImageMagick's motion blur, approximated), one per angle."""
    taps = int(math.ceil(radius)) + 1
    size = 2 * taps + 1
    steps = torch.arange(taps, dtype=torch.float32)
    weights = torch.exp(-steps ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    kernels = torch.zeros(len(angles_deg), size, size)
    for i, angle in enumerate(angles_deg.tolist()):
        theta = math.radians(angle)
        xs, ys = taps + steps * math.cos(theta), taps - steps * math.sin(theta)
        x0, y0 = xs.floor().long(), ys.floor().long()
        fx, fy = xs - x0, ys - y0
        for dx, dy, share in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            kernels[i].index_put_(((y0 + dy).clamp(0, size - 1), (x0 + dx).clamp(0, size - 1)), weights * share,
                                  accumulate=True)
    return kernels


def _clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre 1/factor of the image, zoomed back to full size (bilinear): the reference's clipped_zoom."""
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    zh, zw = max(h, int(round(ch * factor))), max(w, int(round(cw * factor)))
    zoomed = F.interpolate(crop, size=(zh, zw), mode="bilinear", align_corners=False)
    th, tw = (zh - h) // 2, (zw - w) // 2
    return zoomed[..., th:th + h, tw:tw + w]


def _plasma_fractal(size: int, decay: float, g: torch.Generator) -> torch.Tensor:
    """Diamond-square height map in [0, 1], (size, size), size a power of two (the reference's plasma_fractal)."""
    m = torch.zeros(size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * (torch.rand(a.shape, generator=g, dtype=torch.float64) * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corners = m[0:size:step, 0:size:step]
        square = corners + torch.roll(corners, -1, 0)
        square = square + torch.roll(square, -1, 1)
        m[half:size:step, half:size:step] = wibbled(square)
        dr = m[half:size:step, half:size:step]
        ul = m[0:size:step, 0:size:step]
        m[0:size:step, half:size:step] = wibbled(dr + torch.roll(dr, 1, 0) + ul + torch.roll(ul, -1, 1))
        m[half:size:step, 0:size:step] = wibbled(dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return (m / m.max()).float()


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else TF.rgb_to_grayscale(x)


# ------------------------------------------------------------------ corruptions
# Each takes images (N, C, H, W) in [0, 1], the severity's constant, a generator; returns the same shape in [0, 1].
def gaussian_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    return (x + torch.randn(x.shape, generator=g).to(x) * c).clamp(0, 1)


def shot_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    return (torch.poisson((x * c).cpu().double(), generator=g).to(x) / c).clamp(0, 1)


def impulse_noise(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    """skimage.util.random_noise(mode="s&p", amount=c): a fraction c of the values, half salt, half pepper."""
    hit = torch.rand(x.shape, generator=g).to(x.device) < c
    salt = (torch.rand(x.shape, generator=g).to(x.device) < 0.5).to(x)
    return torch.where(hit, salt, x)


def defocus_blur(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    return _depthwise(x, _disk(c[0], c[1])).clamp(0, 1)


def glass_blur(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    sigma, delta, iterations = c
    x = (_gaussian_blur(x, sigma) * 255).to(torch.uint8).float() / 255  # the reference's np.uint8 round trip
    n, ch, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    for _ in range(iterations):
        # np.random.randint(-delta, delta): offsets in [-delta, delta - 1]
        dy = torch.randint(-delta, delta, (n, h, w), generator=g).to(x.device)
        dx = torch.randint(-delta, delta, (n, h, w), generator=g).to(x.device)
        src = (rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)
        x = x.flatten(2).gather(2, src.flatten(1).unsqueeze(1).expand(n, ch, h * w)).view(n, ch, h, w)
    return _gaussian_blur(x, sigma).clamp(0, 1)


def motion_blur(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    angles = torch.rand(x.shape[0], generator=g) * 90 - 45
    return _depthwise(x, _motion_kernels(c[0], c[1], angles)).clamp(0, 1)


def zoom_blur(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    stop, step = c
    factors = torch.arange(1, stop, step, dtype=torch.float64).tolist()  # np.arange(1, stop, step)
    out = torch.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return ((x + out) / (len(factors) + 1)).clamp(0, 1)


def snow(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    layer = (torch.randn((n, 1, h, w), generator=g) * c[1] + c[0]).to(x)
    layer = _clipped_zoom(layer, c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    layer = (layer * 255).to(torch.uint8).float() / 255  # the reference saves the layer as an 8-bit PNG
    angles = torch.rand(n, generator=g) * 90 - 135
    layer = _depthwise(layer, _motion_kernels(c[4], c[5], angles))
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return (x + layer + torch.rot90(layer, 2, dims=(-2, -1))).clamp(0, 1)


def fog(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    size = 1 << (max(h, w, 2) - 1).bit_length()
    fractal = torch.stack([_plasma_fractal(size, c[1], g)[:h, :w] for _ in range(n)]).unsqueeze(1).to(x)
    top = x.amax(dim=(1, 2, 3), keepdim=True)  # the reference's x.max(), per image
    return ((x + c[0] * fractal) * top / (top + c[0])).clamp(0, 1)


def brightness(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    scaled = x * v_new / v.clamp_min(1e-12)
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0, 1)


def contrast(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


def elastic_transform(x: torch.Tensor, c: tuple, g: torch.Generator) -> torch.Tensor:
    """A random affine (three points moved by up to c[2]) then a smoothed random displacement
    (uniform(-1, 1) blurred with sigma c[1], times c[0]); sizes in units of the shorter side."""
    n, _, h, w = x.shape
    scale = min(h, w)
    alpha, sigma, shift = c[0] * scale, c[1] * scale, c[2] * scale
    cy, cx, sq = h // 2, w // 2, scale // 3
    # the reference's three points (x, y), and the same moved at random
    src = torch.tensor([[cx + sq, cy + sq], [cx - sq, cy + sq], [cx - sq, cy - sq]], dtype=torch.float64)
    dst = src + (torch.rand((n, 3, 2), generator=g, dtype=torch.float64) * 2 - 1) * shift
    # output pixel p samples the input at A⁻¹ p (cv2.warpAffine maps src -> dst)
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    affine = torch.linalg.solve(torch.cat([dst, ones], 2), src.expand(n, 3, 2)).transpose(1, 2)  # (n, 2, 3): dst -> src
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    coords = (grid @ affine.transpose(1, 2)).view(n, h, w, 2)
    fields = torch.rand((n, 2, h, w), generator=g) * 2 - 1
    if sigma > 0:
        fields = _smooth(fields, sigma)
    coords = coords + (fields * alpha).permute(0, 2, 3, 1).double()
    norm = torch.stack([coords[..., 0] / max(w - 1, 1), coords[..., 1] / max(h - 1, 1)], -1) * 2 - 1
    out = F.grid_sample(x, norm.to(x), mode="bilinear", padding_mode="reflection", align_corners=True)
    return out.clamp(0, 1)


def pixelate(x: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest").clamp(0, 1)


def jpeg_compression(x: torch.Tensor, c: int, g: torch.Generator) -> torch.Tensor:
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its JPEG codec in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        out = [decode_jpeg(encode_jpeg(img, quality=int(c))).float() / 255 for img in images]
    return torch.stack(out).to(x)


#: (images, severity constant, generator) -> images. The constant's type is the corruption's own
#: (a float, an int or a tuple of parameters, from ``CONSTANTS``), hence Any: a callable that takes a
#: float is no callable that takes any object.
Corruption = Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]
#: The 14 of the 15 ImageNet-C corruptions (frost left out: it needs the reference's frost photographs),
#: in the reference's order: noise, blur, weather, digital.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "fog": fog,
    "brightness": brightness, "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
#: Named but not implemented, with the reason (for a clear error).
LEFT_OUT = {"frost": "needs the frost photographs that hendrycks/robustness ships (not included here)"}


def check_names(names: list[str]) -> list[str]:
    """The corruptions asked for, checked (unknown or left-out names are a ``ConfigError``)."""
    for name in names:
        if name in LEFT_OUT:
            raise ConfigError(f"corruption {name!r} is not available: it {LEFT_OUT[name]}")
        if name not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption {name!r} (known: {', '.join(CORRUPTIONS)})")
    return list(names)


def table_for(x: torch.Tensor, table: str = "auto") -> str:
    """Which severity constants apply to images ``x``: ``cifar`` for small images with ``auto``."""
    if table not in TABLES:
        raise ConfigError(f"unknown severity table {table!r} (known: {', '.join(TABLES)})")
    if table != "auto":
        return table
    return "cifar" if min(x.shape[-2:]) < SMALL_IMAGE else "imagenet"


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator, table: str = "auto") -> torch.Tensor:
    """Corrupt images ``x`` (N, C, H, W), C = 1 or 3, values in [0, 1], with ``name`` at ``severity``
    (1..5); same shape and dtype, values in [0, 1]. Deterministic given the generator's state."""
    check_names([name])
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of 1..5, got {severity}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"corruptions take images (N, C, H, W) with 1 or 3 channels, got shape {tuple(x.shape)}")
    constant = CONSTANTS[table_for(x, table)][name][severity - 1]
    dtype = x.dtype
    return CORRUPTIONS[name](x.float(), constant, generator).to(dtype)
