"""Training augmentation (utils/augment.py) and its use by the dataset."""
import ml_collections
import numpy as np
import pytest
import torch

import datasets
from configs.default_fastMRI_configs import get_default_configs
from utils.augment import AUGMENT_KEYS, add_scalp, augment_acquisition, augment_slice, object_mask
from utils.coils import coil_kspace
from utils.mri import sense_adjoint


def settings(**values):
    base = {key: 0 for key in AUGMENT_KEYS}
    base.update(values)
    return ml_collections.ConfigDict(base)


def disc(n=48, radius=0.5):
    y, x = np.mgrid[:n, :n] / (n - 1) * 2 - 1
    return ((x ** 2 + y ** 2) < radius ** 2).astype(float) * (1 + 0.5 * x)


def birdcage(c, n):
    angles = 2 * np.pi * np.arange(c) / c
    y, x = np.mgrid[:n, :n] / (n - 1) * 2 - 1
    maps = np.exp(-((x[None] - np.cos(angles)[:, None, None]) ** 2 + (y[None] - np.sin(angles)[:, None, None]) ** 2))
    return (maps / np.sqrt((maps ** 2).sum(0))).astype(np.complex64)


def test_all_keys_off_is_the_identity():
    image, maps = disc().astype(np.complex64), birdcage(4, 48)
    out, out_maps = augment_slice(image, maps, np.random.default_rng(0), settings())
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_maps, maps)


def test_flip_mirrors_left_right_exactly():
    image = disc().astype(np.complex64)
    out, _ = augment_slice(image, birdcage(4, 48), np.random.default_rng(0), settings(flip=1.0))
    np.testing.assert_allclose(out, image[:, ::-1], atol=1e-6)


def test_gamma_keeps_the_maximum_and_changes_contrast():
    image = disc().astype(np.complex64)
    out, _ = augment_slice(image, birdcage(4, 48), np.random.default_rng(3), settings(gamma=0.5))
    assert np.abs(out).max() == pytest.approx(np.abs(image).max(), rel=1e-5)
    assert not np.allclose(np.abs(out), np.abs(image), atol=1e-3)


def test_rotation_and_scale_move_the_object_but_keep_its_energy_roughly():
    image = disc().astype(np.complex64)
    out, _ = augment_slice(image, birdcage(4, 48), np.random.default_rng(1), settings(rotate=20, scale=0.1))
    assert not np.allclose(out, image, atol=1e-3)
    assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(image), rel=0.25)


def test_coil_subset_keeps_unit_sum_of_squares():
    maps = birdcage(8, 32)
    for seed in range(5):
        _, out = augment_slice(disc(32).astype(np.complex64), maps, np.random.default_rng(seed), settings(min_coils=3))
        assert 3 <= out.shape[0] <= 8
        np.testing.assert_allclose((np.abs(out) ** 2).sum(0), 1, atol=1e-5)


def _combined(kspace, maps):
    combined = sense_adjoint(torch.from_numpy(kspace)[None], torch.from_numpy(maps)[None], 1.0)
    return combined.reshape(kspace.shape[1:]).numpy()


def test_acquisition_off_is_the_stored_coils_exactly():
    image, maps = disc().astype(np.complex64), birdcage(4, 48)
    kspace, used = augment_acquisition(image, maps, np.random.default_rng(0), settings(max_coils=16, noise=0.1))
    assert used is maps
    np.testing.assert_array_equal(kspace, coil_kspace(image[None], maps)[0])


def test_acquisition_draws_coil_counts_in_range_and_keeps_the_label_exact():
    image, maps = disc().astype(np.complex64), birdcage(4, 48)
    counts = set()
    for seed in range(40):
        kspace, used = augment_acquisition(image, maps, np.random.default_rng(seed),
                                           settings(acquisition=1, min_coils=3, max_coils=9, oversample=0.5,
                                                    loops=0.5))
        assert kspace.shape == used.shape and kspace.dtype == np.complex64 and 3 <= used.shape[0] <= 9
        counts.add(used.shape[0])
        # Noiseless with the true maps: the label Aᴴk is the image wherever the coils see it.
        seen = (np.abs(used) ** 2).sum(0) > 1e-3
        np.testing.assert_allclose(_combined(kspace, used)[seen] / (np.abs(used) ** 2).sum(0)[seen], image[seen],
                                   atol=1e-4)
    assert len(counts) >= 5  # the count is drawn, not fixed


def test_acquisition_noise_level_and_estimated_maps():
    image, maps = disc(64).astype(np.complex64), birdcage(8, 64)
    noisy = settings(acquisition=1, noise=0.03, noise_correlation=0.3, estimated_maps=1)
    levels = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        kspace, used = augment_acquisition(image, maps, rng, noisy)
        clean, _ = augment_acquisition(image, maps, np.random.default_rng(seed), settings(acquisition=1))
        coil_images = np.fft.ifft2(np.fft.ifftshift(clean, axes=(-2, -1)), norm="ortho")
        peak = np.abs(coil_images).max()
        noise = kspace - clean
        levels.append(np.sqrt(np.mean(np.abs(noise) ** 2)) / peak)
        # Estimated maps: zero outside the object's low-resolution support, rss one inside.
        rss = np.sqrt((np.abs(used) ** 2).sum(0))
        assert np.all((np.abs(rss - 1) < 1e-4) | (rss == 0)) and 0.2 < (rss > 0).mean() < 0.9
    levels = np.array(levels)
    assert levels.max() <= 0.03 * 1.1  # never above `noise` × the brightest coil image
    assert (levels == 0).sum() >= 1 and (levels > 0.001).sum() >= 6  # none with probability 1/4, log-uniform else


def test_phase_is_smooth_and_magnitude_unchanged():
    image = disc().astype(np.complex64)
    out, _ = augment_slice(image, birdcage(4, 48), np.random.default_rng(2), settings(phase=2.0))
    np.testing.assert_allclose(np.abs(out), np.abs(image), atol=1e-5)
    inside = np.abs(image) > 0
    assert np.ptp(np.angle(out * np.conj(np.exp(1j * np.angle(out[24, 24]))))[inside]) > 0.05


def test_scalp_surrounds_the_object_and_keeps_it():
    brain = disc(96, 0.5)
    head = add_scalp(brain, np.random.default_rng(0), pixel_mm=1.0)
    inside = object_mask(brain)
    np.testing.assert_array_equal(head[inside], brain[inside])
    y, x = np.mgrid[:96, :96] / 95 * 2 - 1
    radius = np.sqrt(x ** 2 + y ** 2)
    ring = (radius > 0.5 + 20 / 96) & (radius < 0.5 + 26 / 96)  # 10–13 mm outside: fat or skin layer
    assert head[ring].mean() > 0.1 * brain.max()
    assert head[radius > 0.5 + 60 / 96].max() < 1e-3  # nothing far out


def dataset_config(n):
    config = get_default_configs()
    config.data.image_size = n
    config.training.skip_slices = 0
    return config


@pytest.fixture
def brain_like_folder(tmp_path):
    from data_prepare.fastmri_io import write_kspace_file, write_maps_file
    from utils.coils import coil_kspace
    n = 32
    maps = birdcage(4, n)
    image = np.stack([disc(n), disc(n, 0.6)]).astype(np.complex64)
    write_kspace_file(str(tmp_path / "k" / "v.h5"), coil_kspace(image, maps), acquisition="T", patient_id="v")
    write_maps_file(str(tmp_path / "k_maps" / "v.h5"), np.broadcast_to(maps, (2, 4, n, n)).copy())
    return str(tmp_path / "k"), str(tmp_path / "k_maps"), n


def test_dataset_augmentation_is_seeded_by_epoch_and_index(brain_like_folder):
    root, maps_root, n = brain_like_folder
    config = dataset_config(n)
    config.data.augment.rotate, config.data.augment.gamma = 15.0, 0.3
    plain = datasets.MultiCoilSliceDataset(root, maps_root, config)
    aug = datasets.MultiCoilSliceDataset(root, maps_root, config, augment=True)
    first = aug[1]["kspace"]
    torch.testing.assert_close(aug[1]["kspace"], first)
    assert not torch.allclose(first, plain[1]["kspace"], atol=1e-3)
    aug.set_epoch(1)
    assert not torch.allclose(aug[1]["kspace"], first, atol=1e-3)
    aug.set_epoch(0)
    torch.testing.assert_close(aug[1]["kspace"], first)


def test_dataset_label_is_the_augmented_image(brain_like_folder):
    root, maps_root, n = brain_like_folder
    config = dataset_config(n)
    config.data.augment.flip = 1.0
    config.data.normalize_type = "img_std"
    plain = datasets.MultiCoilSliceDataset(root, maps_root, config)[0]
    item = datasets.MultiCoilSliceDataset(root, maps_root, config, augment=True)[0]
    ones = torch.ones(())
    label = sense_adjoint(item["kspace"][None], item["maps"][None], ones)[0, 0]
    reference = sense_adjoint(plain["kspace"][None], plain["maps"][None], ones)[0, 0]
    torch.testing.assert_close(label.abs(), reference.abs().flip(-1), atol=1e-4, rtol=1e-3)


def test_augmentation_is_off_unless_asked(brain_like_folder):
    root, maps_root, n = brain_like_folder
    config = dataset_config(n)
    config.data.augment.rotate = 10.0
    assert datasets.MultiCoilSliceDataset(root, maps_root, config).augment is None
    assert datasets.MultiCoilSliceDataset(root, maps_root, dataset_config(n), augment=True).augment is None
