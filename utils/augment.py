"""Image-domain augmentation of training slices and the synthetic scalp and skull of a brain-only image.

Augmentation (config group `data.augment`, every key 0 = off, all off in the paper configs) acts on one slice's
map-combined complex image `x` `[H, W]` and its coil maps `S` `[C, H, W]`; the training k-space is then made
again as `F(S x)`, so the label `Aᴴk` is the augmented image exactly. Geometric changes move the head inside a
fixed coil array (the maps are not moved). Every draw comes from the `numpy.random.Generator` passed in, which the
dataset seeds from `(config.seed, epoch, slice index)`, so an epoch's augmentation is the same after a resume and
whatever worker draws it.

| key | effect |
|---|---|
| `flip` | probability of a left–right flip |
| `rotate` | rotation by U(−rotate, rotate) degrees |
| `scale` | zoom by a factor U(1 − scale, 1 + scale) |
| `gamma` | magnitude contrast `|x|^γ` with `log γ ~ U(−gamma, gamma)` (maximum kept) |
| `bias` | smooth multiplicative intensity inhomogeneity `exp(b·field)`, `|b| ≤ bias` |
| `phase` | replace the phase by a random smooth phase of amplitude ≤ `phase` radians |
| `scalp` | probability of adding skull and scalp layers around the object (`add_scalp`) |
| `min_coils` | keep a random run of `min_coils … C` neighbouring coils (maps renormalised); 0 keeps all |

The acquisition itself is randomised by `augment_acquisition` (after the keys above), so that the network sees
images as a scanner delivers them, not only as the training simulator made them:

| key | effect |
|---|---|
| `acquisition` | probability of replacing the stored coils by a freshly simulated array (the keys below) |
| `max_coils` | its coil count is uniform in `max(min_coils, 2) … max_coils` (0: the stored count) |
| `oversample` | probability that the coils surround a 2× oversampled readout (phase-encode FOV ×U(1, 1.3)), as in fastMRI |
| `loops` | probability of surface loops on an ellipse instead of a birdcage (`utils/coils.py`) |
| `noise` | complex noise up to this fraction of the brightest coil image (log-uniform from `noise`/30; none with probability ¼) |
| `noise_correlation` | coil noise correlation up to this value (`utils/coils.noise_covariance`) |
| `estimated_maps` | probability that the slice is combined with maps estimated from its 24 central columns (`ratio_maps`) instead of the true ones |

Without `acquisition` (or when its draw fails) the k-space is `F(S x)` with the stored maps, as before.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from utils.coils import add_noise, coil_kspace, coil_maps, ratio_maps

AUGMENT_KEYS = ("flip", "rotate", "scale", "gamma", "bias", "phase", "scalp", "min_coils", "acquisition", "max_coils",
                "oversample", "loops", "noise", "noise_correlation", "estimated_maps")
ESTIMATE_ACS = 24  # central columns of the map estimate of `estimated_maps`


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise `[H, W]` (filter width `sigma` pixels) scaled to a maximum |value| of 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(np.abs(field).max(), 1e-12)


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, max_phase: float) -> np.ndarray:
    """A random smooth phase map (radians) `[H, W]`: a global offset in [−π, π) plus a random quadratic
    polynomial of the normalised coordinates whose largest absolute value over the grid is `max_phase`."""
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = np.stack([x, y, x * y, x ** 2 - 1 / 3, y ** 2 - 1 / 3])
    poly = np.tensordot(rng.standard_normal(len(terms)), terms, axes=1)
    poly *= max_phase / max(np.abs(poly).max(), 1e-12)
    return rng.uniform(-np.pi, np.pi) + poly


def object_mask(magnitude: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """Boolean `[H, W]`: the filled region where the lightly smoothed magnitude exceeds `threshold`·its maximum."""
    smooth = ndimage.gaussian_filter(magnitude, 1.0)
    return ndimage.binary_fill_holes(smooth > threshold * max(smooth.max(), 1e-12))


# Layers outside the brain as in a T1-weighted head: (thickness range in mm, intensity range relative to the
# image maximum): CSF and inner table (dark), diploë (marrow, grey), outer table (dark), scalp fat (bright), skin.
SCALP_LAYERS = (((1.0, 3.0), (0.02, 0.08)), ((1.5, 4.0), (0.25, 0.5)), ((1.0, 2.0), (0.02, 0.08)),
                ((2.0, 5.0), (0.55, 0.9)), ((1.0, 2.5), (0.2, 0.4)))


def add_scalp(magnitude: np.ndarray, rng: np.random.Generator, pixel_mm: float) -> np.ndarray:
    """Surround a brain-only magnitude image `[H, W]` with skull and scalp layers (`SCALP_LAYERS`).

    Each layer's thickness is drawn per image and varies smoothly around the head (±40 %), intensities carry a
    smooth texture, and the layer edges are blurred by about half a pixel. Pixels inside the object are kept.
    `pixel_mm` is the pixel size in millimetres. Returns float64 `[H, W]`.
    """
    shape, peak = magnitude.shape, float(magnitude.max())
    inside = object_mask(magnitude)
    if peak <= 0 or not inside.any():
        return magnitude.astype(np.float64)
    distance = ndimage.distance_transform_edt(~inside) * pixel_mm
    wobble = 1 + 0.4 * smooth_field(shape, rng, 10.0)
    layers = np.zeros(shape)
    edge = np.zeros(shape)
    for (thick_lo, thick_hi), (level_lo, level_hi) in SCALP_LAYERS:
        start, edge = edge, edge + rng.uniform(thick_lo, thick_hi) * wobble
        texture = 1 + 0.15 * smooth_field(shape, rng, 2.0)
        layers = np.where((distance > start) & (distance <= edge), rng.uniform(level_lo, level_hi) * texture, layers)
    layers = ndimage.gaussian_filter(layers * peak, 0.5)
    return np.where(inside, magnitude, layers)


def _affine(image: np.ndarray, angle_deg: float, zoom: float, flip: bool) -> np.ndarray:
    """Rotate by `angle_deg`, zoom by `zoom` and optionally flip left–right a complex image about its centre
    (linear interpolation, zero outside)."""
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
    if flip:
        rotation = rotation @ np.diag([1.0, -1.0])
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - rotation @ centre
    move = lambda part: ndimage.affine_transform(part, rotation, offset, order=1, mode="constant")  # noqa: E731
    return move(image.real) + 1j * move(image.imag)


def _coil_subset(maps: np.ndarray, rng: np.random.Generator, min_coils: int) -> np.ndarray:
    """A random run of neighbouring coils (cyclically), renormalised to `Σ|S|² = 1` where the maps are non-zero."""
    num = maps.shape[0]
    keep = int(rng.integers(min(min_coils, num), num + 1))
    if keep >= num:
        return maps
    first = int(rng.integers(num))
    subset = maps[[(first + i) % num for i in range(keep)]]
    norm = np.sqrt(np.sum(np.abs(subset) ** 2, axis=0))
    return subset / np.where(norm > 0, norm, 1)


def augment_slice(image: np.ndarray, maps: np.ndarray, rng: np.random.Generator, settings,
                  pixel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Augment one slice (module docstring). `image` complex `[H, W]`, `maps` complex `[C, H, W]`; `settings`
    has the `AUGMENT_KEYS` (a ConfigDict or any object with those attributes). Returns `(image, maps)`."""
    magnitude, phase = np.abs(image), np.angle(image)
    if settings.scalp and rng.random() < settings.scalp:
        magnitude = add_scalp(magnitude, rng, pixel_mm)
    if settings.gamma:
        peak = magnitude.max()
        if peak > 0:
            magnitude = peak * (magnitude / peak) ** math.exp(rng.uniform(-settings.gamma, settings.gamma))
    if settings.bias:
        magnitude = magnitude * np.exp(rng.uniform(-settings.bias, settings.bias) *
                                       smooth_field(magnitude.shape, rng, magnitude.shape[0] / 6))
    if settings.phase:
        phase = smooth_phase(magnitude.shape, rng, rng.uniform(0, settings.phase))
    image = magnitude * np.exp(1j * phase)
    flip = bool(settings.flip) and rng.random() < settings.flip
    angle = rng.uniform(-settings.rotate, settings.rotate) if settings.rotate else 0.0
    zoom = rng.uniform(1 - settings.scale, 1 + settings.scale) if settings.scale else 1.0
    if flip or angle or zoom != 1.0:
        image = _affine(image, angle, zoom, flip)
    if settings.min_coils:
        maps = _coil_subset(maps, rng, int(settings.min_coils))
    return image.astype(np.complex64), maps.astype(np.complex64)


def augment_acquisition(image: np.ndarray, maps: np.ndarray, rng: np.random.Generator,
                        settings) -> tuple[np.ndarray, np.ndarray]:
    """Coil k-space `[C', H, W]` and the maps `[C', H, W]` the slice is combined with, for an augmented image `x`
    `[H, W]` (module docstring): with probability `settings.acquisition` a random coil array (count, layout, radius,
    oversampled field of view), noise (level, coil correlation) and true or estimated maps; otherwise `F(S x)`
    with the given maps. complex64."""
    if not (settings.acquisition and rng.random() < settings.acquisition):
        return coil_kspace(image[None], maps)[0], maps
    h, w = image.shape
    most = max(int(settings.max_coils) or maps.shape[0], 2)
    num_coils = int(rng.integers(min(max(int(settings.min_coils), 2), most), most + 1))
    fov = (h, w)
    if settings.oversample and rng.random() < settings.oversample:
        fov = (2 * h, int(round(w * rng.uniform(1.0, 1.3))))
    loops = bool(settings.loops) and rng.random() < settings.loops
    radius = rng.uniform(1.0, 1.3) if loops else rng.uniform(1.1, 1.8)
    true_maps = coil_maps("loops" if loops else "birdcage", num_coils, (h, w), radius, fov)
    kspace = coil_kspace(image[None], true_maps)
    if settings.noise and rng.random() < 0.75:
        level = settings.noise * math.exp(rng.uniform(-math.log(30.0), 0.0))
        correlation = rng.uniform(0, settings.noise_correlation) if settings.noise_correlation else 0.0
        kspace = add_noise(kspace, None, rng, peak_fraction=level, correlation=correlation)
    kspace = kspace[0]
    if settings.estimated_maps and rng.random() < settings.estimated_maps:
        return kspace, ratio_maps(kspace, min(ESTIMATE_ACS, w))
    return kspace, true_maps
