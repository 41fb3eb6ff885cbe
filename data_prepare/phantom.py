"""Randomised anatomy-like multi-coil phantoms (the bundled `phantom` set; the published quick start's `photom`).

Each volume is a random 3-D arrangement of ellipsoids sliced axially: a bright outer shell (fat), a darker body,
3–6 organs of varied contrast and 4–12 small structures inside the body (painted in that order, each clipped to
the body), a smooth multiplicative texture, a slight blur (partial volume) and a smooth phase. Slices of one volume
are cross-sections at different heights, so they differ while sharing anatomy. Coil sensitivities are sigpy
birdcage maps (8–15 coils by default) in the convention of `utils.coils`, so `Σ conj(S)·F⁻¹k` returns the
phantom image. Everything is drawn from one seed: the same seed gives identical arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from utils.coils import birdcage_sensitivities, coil_kspace
from utils.augment import smooth_phase


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in normalised coordinates (the field of view is [−1, 1]² in-plane), rotated in-plane."""

    centre: tuple[float, float, float]  # (x, y, z)
    axes: tuple[float, float, float]  # semi-axes (a, b, c)
    angle: float  # in-plane rotation, radians
    value: float  # intensity painted inside

    def section(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """Boolean mask of the cross-section at height `z` on the grid `x, y`."""
        scale = 1.0 - ((z - self.centre[2]) / self.axes[2]) ** 2
        if scale <= 0:
            return np.zeros(x.shape, bool)
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        dx, dy = x - self.centre[0], y - self.centre[1]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        return (u / self.axes[0]) ** 2 + (v / self.axes[1]) ** 2 <= scale


def random_anatomy(rng: np.random.Generator) -> tuple[Ellipsoid, Ellipsoid, list[Ellipsoid]]:
    """Draw a shell, the body inside it, and the structures inside the body (organs, then small details)."""
    a, b = rng.uniform(0.68, 0.88), rng.uniform(0.52, 0.82)
    centre = (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), 0.0)
    angle, height = rng.uniform(-0.35, 0.35), rng.uniform(1.1, 1.6)
    shell = Ellipsoid(centre, (a, b, height), angle, rng.uniform(0.75, 1.0))
    inner = rng.uniform(0.84, 0.93)
    body = Ellipsoid(centre, (a * inner, b * inner, height * inner), angle, rng.uniform(0.25, 0.5))

    def inside(spread: float) -> tuple[float, float, float]:
        r, t = spread * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        du, dv = r * a * inner * np.cos(t), r * b * inner * np.sin(t)
        cos, sin = np.cos(angle), np.sin(angle)
        return centre[0] + cos * du - sin * dv, centre[1] + sin * du + cos * dv, rng.uniform(-0.5, 0.5)

    structures = [Ellipsoid(inside(0.55), (rng.uniform(0.08, 0.32), rng.uniform(0.08, 0.32), rng.uniform(0.4, 1.2)),
                            rng.uniform(0, np.pi), rng.uniform(0.05, 0.95)) for _ in range(rng.integers(3, 7))]
    structures += [Ellipsoid(inside(0.85), (rng.uniform(0.012, 0.045), rng.uniform(0.012, 0.045),
                                            rng.uniform(0.2, 0.8)), rng.uniform(0, np.pi), rng.uniform(0.0, 1.0))
                   for _ in range(rng.integers(4, 13))]
    return shell, body, structures


def phantom_images(rng: np.random.Generator, size: int = 320, num_slices: int = 1,
                   max_phase: float = 1.0) -> np.ndarray:
    """Complex phantom slices of one random volume.

    Args:
        rng: the volume's random generator.
        size: matrix size n (images are n × n).
        num_slices: slices at heights evenly spaced in [−0.6, 0.6] (one slice: a random height near the centre).
        max_phase: largest deviation (radians) of the smooth phase from its random global offset.

    Returns:
        complex64 images `[num_slices, n, n]`, magnitude in [0, 1].
    """
    shell, body, structures = random_anatomy(rng)
    heights = np.linspace(-0.6, 0.6, num_slices) if num_slices > 1 else [rng.uniform(-0.2, 0.2)]
    y, x = np.meshgrid((np.arange(size) - size / 2) / (size / 2), (np.arange(size) - size / 2) / (size / 2),
                       indexing="ij")
    texture = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 25)
    texture = 1.0 + 0.06 * texture / max(texture.std(), 1e-12)
    phase = np.exp(1j * smooth_phase((size, size), rng, max_phase))
    images = np.zeros((len(heights), size, size), np.complex64)
    for i, z in enumerate(heights):
        image = np.where(shell.section(x, y, z), shell.value, 0.0)
        inside = body.section(x, y, z)
        image[inside] = body.value
        for structure in structures:
            image[structure.section(x, y, z) & inside] = structure.value
        image = np.clip(gaussian_filter(image * texture, sigma=0.6), 0.0, 1.0)
        images[i] = image * phase
    return images


def phantom_volume(seed: int, size: int = 320, num_slices: int = 1, coils: tuple[int, int] = (8, 15),
                   max_phase: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom volume with its coils, deterministic from `seed`.

    Args:
        seed: seed of every random choice of the volume.
        size, num_slices, max_phase: see `phantom_images`.
        coils: inclusive range of the coil count, drawn per volume.

    Returns:
        `(kspace, maps, images)`: complex64 centred k-space `[S, C, n, n]`, sensitivities `[S, C, n, n]` (the same
        for every slice) and the phantom images `[S, n, n]` (`Σ_c conj(S_c) F⁻¹ k_c` equals the image).
    """
    rng = np.random.default_rng(seed)
    images = phantom_images(rng, size, num_slices, max_phase)
    num_coils = int(rng.integers(coils[0], coils[1] + 1))
    maps = birdcage_sensitivities(num_coils, (size, size), radius=rng.uniform(1.3, 2.0))
    kspace = coil_kspace(images, maps)
    return kspace, np.broadcast_to(maps, kspace.shape).copy(), images


def volume_seed(seed: int, split: str, index: int) -> int:
    """Seed of volume `index` of a split (`train`, `val`, `test`), distinct across splits for one base seed."""
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    return int(np.random.SeedSequence([seed, split_id, index]).generate_state(1)[0])
