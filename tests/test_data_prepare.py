"""Data preparation: ESPIRiT (sigpy, BART), the maps script, the phantom builder, multi-coil simulation, the index
script and storage helpers."""
from __future__ import annotations

import os

import h5py
import nibabel
import numpy as np
import pytest
import torch
from skimage import io as skio

import datasets
from configs.default_fastMRI_configs import get_default_configs
from data_prepare import (generate_brain_demo, generate_smaps_fastMRI, generate_smaps_phantom, save_data_slice,
                          simulate_multicoil)
from utils.coils import add_noise, align_phase, birdcage_sensitivities
from data_prepare.espirit import acs_width, bart_binary, espirit_maps, read_cfl, write_cfl
from data_prepare.fastmri_io import quantize
from data_prepare.phantom import phantom_volume
from tests.conftest import write_fastmri_kspace
from utils.mri import sense_adjoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_BART = pytest.mark.skipif(bart_binary() is None, reason="BART is not installed (`apt-get install bart` or "
                                                              "$TOOLBOX_PATH); BART backend not tested")


def _config(image_size):
    config = get_default_configs()
    config.device = "cpu"
    config.data.image_size = image_size
    config.training.num_workers = 0
    return config


def _np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _nrmse_up_to_phase(estimate, truth, support):
    """NRMSE of `estimate` against `truth` inside `support`, after the best global phase."""
    e, t = estimate[support], truth[support]
    phase = np.vdot(e, t)
    phase /= abs(phase)
    return np.linalg.norm(e * phase - t) / np.linalg.norm(t)


def _nrmse_up_to_scale(estimate, truth, support):
    """NRMSE of `estimate` against `truth` inside `support`, after the best complex scale factor."""
    e, t = estimate[support], truth[support]
    return np.linalg.norm(np.vdot(e, t) / np.vdot(e, e) * e - t) / np.linalg.norm(t)


@pytest.fixture(scope="module")
def phantom96():
    """One 96×96 phantom slice with 8 coils: (k-space [C,H,W], image [H,W], object support [H,W])."""
    kspace, _, images = phantom_volume(seed=11, size=96, num_slices=1, coils=(8, 8))
    return kspace[0], images[0], np.abs(images[0]) > 0.05


@pytest.fixture(scope="module")
def sigpy_maps96(phantom96):
    return espirit_maps(phantom96[0], acs=24, backend="sigpy", device="cpu")


# --------------------------------------------------------------------------------------------------------------
# ESPIRiT.
# --------------------------------------------------------------------------------------------------------------

def test_sigpy_espirit_recovers_phantom_up_to_global_phase(phantom96, sigpy_maps96):
    kspace, image, support = phantom96
    assert sigpy_maps96.dtype == np.complex64 and sigpy_maps96.shape == kspace.shape
    combined = np.sum(np.conj(sigpy_maps96) * _np_ifft2c(kspace), axis=0)
    assert _nrmse_up_to_phase(combined, image, support) < 0.02
    np.testing.assert_allclose(np.sum(np.abs(sigpy_maps96[:, support]) ** 2, axis=0), 1.0, atol=1e-3)


@NEEDS_BART
def test_bart_maps_agree_with_sigpy(phantom96, sigpy_maps96):
    kspace, image, support = phantom96
    bart = espirit_maps(kspace, acs=24, backend="bart")
    inner = np.abs(np.sum(np.conj(sigpy_maps96) * bart, axis=0))
    assert inner[support].min() >= 0.98
    combined = np.sum(np.conj(bart) * _np_ifft2c(kspace), axis=0)
    assert _nrmse_up_to_phase(combined, image, support) < 0.02


def test_espirit_from_undersampled_acs(phantom96, sigpy_maps96):
    kspace, image, support = phantom96
    mask = np.zeros(kspace.shape[-1], np.float32)
    mask[1::4] = 1
    mask[36:60] = 1  # 24 centre columns of 96
    assert acs_width(kspace * mask) == 24
    maps = espirit_maps(kspace * mask, acs=24, backend="sigpy", device="cpu")
    np.testing.assert_allclose(maps, sigpy_maps96, atol=1e-5)  # only the ACS is used
    with pytest.raises(ValueError, match=r"includes unsampled columns.*centre is 24 columns wide"):
        espirit_maps(kspace * mask, acs=30, backend="sigpy")


def test_espirit_argument_errors(phantom96):
    with pytest.raises(ValueError, match=r"unknown ESPIRiT backend 'matlab'"):
        espirit_maps(phantom96[0], backend="matlab")
    with pytest.raises(ValueError, match=r"one slice of multi-coil k-space \[C, H, W\]"):
        espirit_maps(phantom96[0][None])
    with pytest.raises(ValueError, match=r"acs=200 must be larger than the kernel"):
        espirit_maps(phantom96[0], acs=200)


def test_cfl_round_trip(tmp_path):
    array = (np.arange(24) + 1j * np.arange(24)[::-1]).reshape(2, 3, 4).astype(np.complex64)
    write_cfl(str(tmp_path / "x"), array)
    np.testing.assert_array_equal(read_cfl(str(tmp_path / "x")), array)


def test_align_phase_convention():
    maps = birdcage_sensitivities(6, (16, 12), radius=1.5)
    assert np.all(np.abs(maps[0].imag) < 1e-6) and np.all(maps[0].real >= 0)
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, atol=1e-5)
    rotated = maps * np.exp(1j * np.linspace(0, 3, 12))
    np.testing.assert_allclose(align_phase(rotated), maps, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# generate_smaps_fastMRI.py
# --------------------------------------------------------------------------------------------------------------

def _phantom_fastmri_folder(tmp_path, files=2):
    """fastMRI-layout files of 2-slice 64×64 phantoms zero-padded (image domain) to a 80×72 matrix."""
    root = tmp_path / "knee"
    os.makedirs(root)
    truth = {}
    for i in range(files):
        _, maps, images = phantom_volume(seed=100 + i, size=64, num_slices=2, coils=(6, 6))
        coil_images = np.pad(maps * images[:, None], ((0, 0), (0, 0), (8, 8), (4, 4)))
        kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil_images, axes=(-2, -1)), norm="ortho"),
                                 axes=(-2, -1))
        write_fastmri_kspace(str(root / f"file{i}.h5"), kspace)
        truth[f"file{i}"] = images
    return str(root), truth


def test_generate_smaps_fastmri_writes_loadable_resumable_maps(tmp_path, capsys):
    root, truth = _phantom_fastmri_folder(tmp_path)
    assert generate_smaps_fastMRI.main(["--input", root, "--crop-size", "64", "--acs", "20"]) == 0
    assert "2 maps files written, 0 already done, 0 failed" in capsys.readouterr().out
    maps_root = root + "_maps"
    with h5py.File(os.path.join(maps_root, "file0.h5"), "r") as f:
        assert f["s_maps"].shape == (2, 6, 64, 64) and f["s_maps"].dtype == np.complex64
    for item in datasets.MultiCoilSliceDataset(root, maps_root, _config(64)):
        combined = sense_adjoint(item["kspace"][None], item["maps"][None], torch.ones(()))[0, 0].numpy()
        image = truth[item["fname"]][item["slice"]]
        assert _nrmse_up_to_scale(combined, image, np.abs(image) > 0.05) < 0.02

    stamp = os.path.getmtime(os.path.join(maps_root, "file0.h5"))
    assert generate_smaps_fastMRI.main(["--input", root, "--crop-size", "64", "--acs", "20"]) == 0
    assert "0 maps files written, 2 already done" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(maps_root, "file0.h5")) == stamp


def test_generate_smaps_fastmri_reports_failed_file_and_goes_on(tmp_path, capsys):
    root, _ = _phantom_fastmri_folder(tmp_path, files=2)
    with h5py.File(os.path.join(root, "file0.h5"), "w") as f:
        f.create_dataset("image", data=np.zeros((2, 8, 8), np.float32))
    assert generate_smaps_fastMRI.main(["--input", root, "--crop-size", "64", "--acs", "20"]) == 1
    captured = capsys.readouterr().out
    assert [line for line in captured.splitlines() if line.startswith("FAILED")] == [
        f"FAILED {os.path.join(root, 'file0.h5')}: no 'kspace' dataset (it holds ['image'])"]
    assert "1 maps files written, 0 already done, 1 failed" in captured
    assert os.path.exists(os.path.join(root + "_maps", "file1.h5"))
    assert not os.path.exists(os.path.join(root + "_maps", "file0.h5"))


def test_generate_smaps_fastmri_with_undersampling_mask(tmp_path):
    root, truth = _phantom_fastmri_folder(tmp_path, files=1)
    mask = np.zeros(64, np.float32)
    mask[::4], mask[22:42] = 1, 1  # 20 centre columns
    np.save(tmp_path / "mask.npy", mask)
    out = str(tmp_path / "maps_from_acs")
    args = ["--input", root, "--output", out, "--crop-size", "64", "--acs", "20", "--mask", str(tmp_path / "mask.npy")]
    assert generate_smaps_fastMRI.main(args) == 0
    item = datasets.MultiCoilSliceDataset(root, out, _config(64))[0]
    combined = sense_adjoint(item["kspace"][None], item["maps"][None], torch.ones(()))[0, 0].numpy()
    image = truth["file0"][0]
    assert _nrmse_up_to_scale(combined, image, np.abs(image) > 0.05) < 0.02
    # A calibration region wider than the mask's fully sampled centre fails with the width found.
    assert generate_smaps_fastMRI.main(args[:-4] + ["--acs", "24", "--mask", str(tmp_path / "mask.npy"),
                                                    "--overwrite"]) == 1


@NEEDS_BART
def test_generate_smaps_fastmri_bart_backend(tmp_path):
    root, truth = _phantom_fastmri_folder(tmp_path, files=1)
    assert generate_smaps_fastMRI.main(["--input", root, "--crop-size", "64", "--acs", "20", "--backend",
                                        "bart"]) == 0
    with h5py.File(os.path.join(root + "_maps", "file0.h5"), "r") as f:
        assert f.attrs["backend"] == "bart" and f["s_maps"].shape == (2, 6, 64, 64)


def test_generate_smaps_fastmri_bad_folder(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        generate_smaps_fastMRI.main(["--input", str(tmp_path / "absent")])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------------------------------------------
# Phantom builder and generate_smaps_phantom.py
# --------------------------------------------------------------------------------------------------------------

def test_phantom_is_deterministic_and_slices_distinct():
    first = phantom_volume(seed=5, size=64, num_slices=3)
    second = phantom_volume(seed=5, size=64, num_slices=3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    kspace, maps, images = first
    assert 8 <= kspace.shape[1] <= 15 and kspace.dtype == np.complex64 and maps.shape == kspace.shape
    for i in range(3):
        for j in range(i):
            assert np.abs(np.abs(images[i]) - np.abs(images[j])).max() > 0.1
    other = phantom_volume(seed=6, size=64, num_slices=3)[2]
    assert np.abs(np.abs(other) - np.abs(images)).max() > 0.1
    # The map-combined image of the simulated k-space is the phantom, with a smooth non-trivial phase.
    combined = np.sum(np.conj(maps) * _np_ifft2c(kspace), axis=1)
    np.testing.assert_allclose(combined, images, atol=1e-5)
    support = np.abs(images[1]) > 0.05
    assert np.ptp(np.angle(images[1][support])) > 0.3 and np.abs(images).max() <= 1.0


def test_generate_smaps_phantom_set_loads_and_is_reproducible(tmp_path, capsys):
    args = ["--train", "3", "--val", "1", "--slices", "2", "--size", "48", "--seed", "3"]
    assert generate_smaps_phantom.main(["--out", str(tmp_path / "a")] + args) == 0
    assert generate_smaps_phantom.main(["--out", str(tmp_path / "b")] + args + ["--precision", "0"]) == 0
    assert "train: 3 volumes × 2 slices" in capsys.readouterr().out
    config = _config(48)
    train = datasets.MultiCoilSliceDataset(str(tmp_path / "a/train"), str(tmp_path / "a/train_maps"), config)
    val = datasets.MultiCoilSliceDataset(str(tmp_path / "a/val"), str(tmp_path / "a/val_maps"), config)
    assert len(train) == 6 and len(val) == 2
    assert all(8 <= v.kspace_shape[1] <= 15 for v in train.volumes)
    with h5py.File(tmp_path / "a/train/phantom_train_0001.h5", "r") as fa, \
            h5py.File(tmp_path / "b/train/phantom_train_0001.h5", "r") as fb:
        assert set(fa.attrs) >= {"acquisition", "max", "norm", "patient_id"} and "ismrmrd_header" in fa
        exact, stored = fb["kspace"][()], fa["kspace"][()]
        assert fa["kspace"].compression == "gzip" and fb["kspace"].compression is None
    # Rounding to 1e-3 of the rms changes the data by at most half a step.
    step = 2.0 ** np.floor(np.log2(1e-3 * np.sqrt(np.mean(np.abs(exact) ** 2))))
    assert np.abs(stored.real - exact.real).max() <= step / 2 + 1e-7
    # A second run resumes: existing volumes are kept.
    stamp = os.path.getmtime(tmp_path / "a/train/phantom_train_0000.h5")
    assert generate_smaps_phantom.main(["--out", str(tmp_path / "a")] + args) == 0
    assert os.path.getmtime(tmp_path / "a/train/phantom_train_0000.h5") == stamp


def test_generate_smaps_phantom_with_espirit_maps(tmp_path):
    assert generate_smaps_phantom.main(["--out", str(tmp_path), "--train", "1", "--val", "0", "--size", "64",
                                        "--coils", "8", "8", "--maps", "sigpy", "--snr-db", "40"]) == 0
    item = datasets.MultiCoilSliceDataset(str(tmp_path / "train"), str(tmp_path / "train_maps"), _config(64))[0]
    assert item["maps"].shape == (8, 64, 64)
    with h5py.File(tmp_path / "train_maps/phantom_train_0000.h5", "r") as f:
        assert f.attrs["maps"] == "sigpy"


def test_bundled_test_set_matches_its_documented_command(tmp_path):
    """The committed slices are what the command in generate_smaps_phantom.py's docstring writes."""
    assert generate_smaps_phantom.main(["--out", str(tmp_path), "--train", "0", "--val", "0", "--test", "2",
                                        "--slices", "2", "--coils", "8", "10", "--seed", "2024",
                                        "--precision", "1e-2"]) == 0
    for sub, key in (("test", "kspace"), ("test_maps", "s_maps")):
        for name in sorted(os.listdir(os.path.join(REPO, "data/phantom", sub))):
            with h5py.File(os.path.join(REPO, "data/phantom", sub, name), "r") as committed, \
                    h5py.File(tmp_path / sub / name, "r") as fresh:
                a, b = committed[key][()], fresh[key][()]
                step = 2.0 ** np.floor(np.log2(1e-2 * np.sqrt(np.mean(np.abs(a) ** 2))))
                assert a.shape == b.shape and np.abs(a - b).max() <= 1.5 * step  # rounding may flip on ties


# --------------------------------------------------------------------------------------------------------------
# simulate_multicoil.py
# --------------------------------------------------------------------------------------------------------------

def _ellipse_volume(shape):
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return ((x / 0.8) ** 2 + (y / 0.6) ** 2 + (z / 1.2) ** 2 < 1) * (100.0 + 50 * x)


def test_simulate_multicoil_from_nifti(tmp_path):
    volume = _ellipse_volume((40, 30, 12))
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.diag([1.0, 2.0, 3.0, 1.0])),
                 str(tmp_path / "head.nii.gz"))
    out = str(tmp_path / "sim")
    assert simulate_multicoil.main([str(tmp_path / "head.nii.gz"), "--out", out, "--slices", "2:10:2", "--size",
                                    "48", "--coils", "6", "--seed", "1"]) == 0
    dataset = datasets.MultiCoilSliceDataset(out, out + "_maps", _config(48))
    assert len(dataset) == 4 and dataset.volumes[0].name == "head"
    item = dataset[0]
    assert item["kspace"].shape == (6, 48, 48) and item["maps"].shape == (6, 48, 48)
    with h5py.File(os.path.join(out, "head.h5"), "r") as f:
        kspace = f["kspace"][()]
    with h5py.File(os.path.join(out + "_maps", "head.h5"), "r") as f:
        maps = f["s_maps"][()]
    magnitude = np.abs(np.sum(np.conj(maps) * _np_ifft2c(kspace), axis=1))
    # 2 mm × 1 mm pixels become square: the 30 rows of 2 mm stretch to 60, then scale to fit 48.
    rows, cols = np.nonzero(magnitude[1] > 0.05)
    assert np.ptp(rows) > np.ptp(cols) and magnitude.max() <= 1.0 + 1e-5 and magnitude.max() > 0.5


def test_simulate_multicoil_from_png_and_npy_with_noise(tmp_path):
    image = (_ellipse_volume((50, 40, 1))[:, :, 0] * 255 / 150).astype(np.uint8)
    skio.imsave(str(tmp_path / "slice.png"), image, check_contrast=False)
    np.save(tmp_path / "stack.npy", np.stack([image, image[::-1]]).astype(float))
    out = str(tmp_path / "sim")
    assert simulate_multicoil.main([str(tmp_path / "slice.png"), str(tmp_path / "stack.npy"), "--out", out,
                                    "--size", "32", "--resize", "crop", "--coils", "4", "--snr-db", "30"]) == 0
    dataset = datasets.MultiCoilSliceDataset(out, out + "_maps", _config(32))
    assert [(v.name, v.kspace_shape) for v in dataset.volumes] == [("slice", (1, 4, 32, 32)),
                                                                   ("stack", (2, 4, 32, 32))]


def test_simulate_multicoil_bad_input(tmp_path):
    np.save(tmp_path / "four_d.npy", np.zeros((2, 2, 8, 8)))
    with pytest.raises(SystemExit):
        simulate_multicoil.main([str(tmp_path / "four_d.npy"), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="select nothing"):
        simulate_multicoil.select_slices("5:5", 10)
    assert simulate_multicoil.select_slices("1,3", 10) == [1, 3]
    assert simulate_multicoil.select_slices("::3", 7) == [0, 3, 6]
    for spec in ("a:b", "", "1:2:3:4", "1:4:0", "2;4"):
        with pytest.raises(ValueError, match=f"slices {spec!r} are not all, start:stop"):
            simulate_multicoil.select_slices(spec, 10)


def test_a_damaged_image_file_is_named_with_its_format(tmp_path, capsys):
    volume = tmp_path / "head.nii.gz"
    nibabel.save(nibabel.Nifti1Image(_ellipse_volume((20, 16, 5)).astype(np.float32), np.eye(4)), str(volume))
    np.save(tmp_path / "stack.npy", np.ones((2, 8, 8)))
    damaged = {"cut.nii.gz": volume.read_bytes()[:200], "text.nii.gz": b"not a volume", "cut.npy":
               (tmp_path / "stack.npy").read_bytes()[:60], "short.png": b"xx"}
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        kind = {"nii.gz": "NIfTI", "npy": ".npy", "png": "image"}[name.split(".", 1)[1]]
        with pytest.raises(ValueError, match=f"not a readable {kind} file .*copied whole"):
            simulate_multicoil.load_stack(str(tmp_path / name), None)
    with pytest.raises(SystemExit):
        simulate_multicoil.main([str(tmp_path / "cut.nii.gz"), "--out", str(tmp_path / "o")])
    assert "cut.nii.gz: not a readable NIfTI file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        simulate_multicoil.load_stack(str(tmp_path / "missing.npy"), None)


# --------------------------------------------------------------------------------------------------------------
# save_data_slice.py, storage helpers, CLI help.
# --------------------------------------------------------------------------------------------------------------

def test_save_data_slice_builds_index_and_reports_problems(make_fastmri, capsys):
    folder = make_fastmri(files=2, slices=3, shape=(64, 48))
    assert save_data_slice.main([folder.root, "--image-size", "32", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "file1000: 3 slices, 4 coils, k-space 64×48, maps 64×48" in out and "2 files, 6 slices" in out
    assert datasets.index_cache_path(folder.root, folder.maps_root).is_file()
    os.remove(os.path.join(folder.maps_root, "file1001.h5"))
    assert save_data_slice.main([folder.root, "--image-size", "32"]) == 1
    assert "file1001.h5 has no maps file" in capsys.readouterr().err
    assert save_data_slice.main([folder.root, "--image-size", "32", "--skip-broken"]) == 0
    captured = capsys.readouterr()
    assert "SKIPPED" in captured.err and "1 files, 3 slices" in captured.out


def test_quantize_and_noise():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(1000) + 1j * rng.standard_normal(1000)).astype(np.complex64)
    np.testing.assert_array_equal(quantize(x, 0), x)
    q = quantize(x, 1e-2)
    step = 2.0 ** np.floor(np.log2(1e-2 * np.sqrt(np.mean(np.abs(x) ** 2))))
    assert np.abs(q.real - x.real).max() <= step / 2 and np.all(np.mod(q.real / step, 1) == 0)
    noisy = add_noise(np.ones((4, 64, 64), np.complex64), 20.0, rng)
    assert abs(np.mean(np.abs(noisy - 1) ** 2) - 0.01) < 1e-3


@pytest.mark.parametrize("module", [generate_brain_demo, generate_smaps_fastMRI, generate_smaps_phantom,
                                    save_data_slice, simulate_multicoil])
def test_every_script_has_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


def test_brain_split_keeps_10_mm_between_training_and_held_out_slices():
    parts, gap = generate_brain_demo.split(), generate_brain_demo.GAP_MM
    held_out = parts["test"] + parts["val"]
    assert min(abs(t - h) for t in parts["train"] for h in held_out) > gap
    assert min(abs(t - v) for t in parts["test"] for v in parts["val"]) > gap
    assert len(parts["train"]) >= 80


def test_generate_brain_demo_reads_the_template_from_a_wheel(tmp_path):
    import zipfile
    gbd = generate_brain_demo
    z, y, x = np.mgrid[:189, :24, :20]
    brain = (((x - 9.5) / 8) ** 2 + ((y - 11.5) / 10) ** 2 + ((z - 94) / 80) ** 2 < 1) * (100 + y)
    template = tmp_path / gbd.TEMPLATE
    nibabel.save(nibabel.Nifti1Image(np.moveaxis(brain, 0, 2).astype(np.uint8), np.eye(4)), str(template))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "nilearn-0.0-py3-none-any.whl", "w") as wheel:
        wheel.write(template, gbd.WHEEL_MEMBER)
    out = tmp_path / "brain"
    assert gbd.main(["--source", str(wheels), "--out", str(out), "--size", "32", "--splits", "test"]) == 0
    config = get_default_configs()
    config.data.image_size = 32
    data = datasets.MultiCoilSliceDataset(str(out / "test"), str(out / "test_maps"), config)
    assert len(data) == len(gbd.TEST_Z)
    with h5py.File(out / "test" / "mni152_test.h5") as f:
        assert f["kspace"].shape == (len(gbd.TEST_Z), gbd.COILS["test"], 32, 32)
    assert not (out / "train").exists()
    with pytest.raises(SystemExit):
        gbd.main(["--source", str(tmp_path / "nothing"), "--out", str(out)])


def test_a_four_dimensional_nifti_of_one_volume_reads_as_its_volume(tmp_path):
    volume = _ellipse_volume((20, 16, 5))
    for name, data in (("3d.nii.gz", volume), ("4d.nii.gz", volume[..., None])):
        nibabel.save(nibabel.Nifti1Image(data.astype(np.float32), np.diag([1.0, 2.0, 3.0, 1.0])),
                     str(tmp_path / name))
    three, spacing3 = simulate_multicoil.load_stack(str(tmp_path / "3d.nii.gz"), None)
    four, spacing4 = simulate_multicoil.load_stack(str(tmp_path / "4d.nii.gz"), None)
    np.testing.assert_array_equal(three, four)
    assert spacing3 == spacing4 == (2.0, 1.0) and three.shape == (5, 16, 20)
    nibabel.save(nibabel.Nifti1Image(np.stack([volume, volume], -1).astype(np.float32), np.eye(4)),
                 str(tmp_path / "series.nii.gz"))
    with pytest.raises(ValueError, match="2-D or 3-D NIfTI"):
        simulate_multicoil.load_stack(str(tmp_path / "series.nii.gz"), None)
