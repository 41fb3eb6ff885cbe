"""The multi-coil slice dataset and loaders against numpy, on tiny fastMRI-layout files (see conftest.py)."""
from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest
import torch

import datasets
from configs.default_fastMRI_configs import get_default_configs
from multicoil import index
from tests.conftest import np_fft2c, np_ifft2c, write_fastmri_kspace, write_maps
from utils.mri import sense_adjoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(image_size=32, normalize_type="std", coeff=1.5, **overrides):
    config = get_default_configs()
    config.device = "cpu"
    config.data.image_size = image_size
    config.data.normalize_type = normalize_type
    config.data.normalize_coeff = coeff
    config.training.num_workers = 0
    config.training.batch_size = 2
    config.training.skip_slices = 0
    config.sampling.batch_size = 2
    for key, value in overrides.items():
        group, name = key.split("__")
        setattr(getattr(config, group), name, value)
    return config


def _np_crop(x, size):
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _np_cropped_kspace(k, size):
    return np_fft2c(_np_crop(np_ifft2c(k.astype(np.complex128)), size))


def _item(folder, config, stem, slice_idx):
    dataset = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)
    index = [i for i, (v, s) in enumerate(dataset.slices) if dataset.volumes[v].name == stem and s == slice_idx][0]
    return dataset[index]


# --------------------------------------------------------------------------------------------------------------
# Loading, crop, normalisation, coil combination.
# --------------------------------------------------------------------------------------------------------------

def test_fastmri_layout_loads_and_crops_like_numpy(make_fastmri):
    folder = make_fastmri(files=1, slices=2, coils=3, shape=(640, 368))
    config = _config(image_size=320)
    dataset = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["fname"] == "file1000" and item["slice"] == 1
    assert item["kspace"].dtype == torch.complex64 and item["kspace"].shape == (3, 320, 320)
    assert item["maps"].dtype == torch.complex64 and item["maps"].shape == (3, 320, 320)
    cropped = _np_cropped_kspace(folder.kspace["file1000"][1], 320)
    expected = cropped / (1.5 * np.std(cropped))
    np.testing.assert_allclose(item["kspace"].numpy(), expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(item["maps"].numpy(), _np_crop(folder.maps["file1000"][1], 320))


@pytest.mark.parametrize("shape", [(64, 48), (63, 47), (40, 33)])
@pytest.mark.parametrize("coeff", [1.5, 1.0])
def test_std_normalisation_equals_formula(make_fastmri, shape, coeff):
    folder = make_fastmri(files=1, slices=1, coils=3, shape=shape)
    item = _item(folder, _config(image_size=32, coeff=coeff), "file1000", 0)
    cropped = _np_cropped_kspace(folder.kspace["file1000"][0], 32)
    std = np.sqrt(np.mean(np.abs(cropped - cropped.mean()) ** 2))
    np.testing.assert_allclose(item["kspace"].numpy(), cropped / (coeff * std), rtol=0, atol=1e-5)


def test_img_std_normalisation_divides_by_std_of_coil_images(make_fastmri):
    folder = make_fastmri(files=1, slices=1, coils=3, shape=(48, 40))
    item = _item(folder, _config(normalize_type="img_std"), "file1000", 0)
    cropped = _np_cropped_kspace(folder.kspace["file1000"][0], 32)
    np.testing.assert_allclose(item["kspace"].numpy(), cropped / np.std(np_ifft2c(cropped)), rtol=0, atol=1e-5)


def test_minmax_normalisation_as_published(make_fastmri):
    folder = make_fastmri(files=1, slices=1, coils=3, shape=(48, 40))
    item = _item(folder, _config(normalize_type="minmax", coeff=2.0), "file1000", 0)
    cropped = _np_cropped_kspace(folder.kspace["file1000"][0], 32)
    maps = _np_crop(folder.maps["file1000"][0], 32).astype(np.complex128)
    image = np.sum(np.conj(maps) * np_ifft2c(cropped), axis=0)
    magnitude, angle = np.abs(image), np.angle(image)
    magnitude = (magnitude - magnitude.min()) / (magnitude.max() - magnitude.min())
    angle = (angle - angle.min()) / (angle.max() - angle.min())
    expected = np_fft2c(maps * (2.0 * magnitude * np.exp(1j * angle)))
    np.testing.assert_allclose(item["kspace"].numpy(), expected, rtol=0, atol=1e-5)


def test_coil_combined_image_equals_numpy(make_fastmri):
    folder = make_fastmri(files=1, slices=2, coils=4, shape=(64, 48))
    item = _item(folder, _config(), "file1000", 1)
    combined = sense_adjoint(item["kspace"][None], item["maps"][None], torch.ones(()))[0, 0].numpy()
    cropped = _np_cropped_kspace(folder.kspace["file1000"][1], 32)
    cropped /= 1.5 * np.std(cropped)
    expected = np.sum(np.conj(_np_crop(folder.maps["file1000"][1], 32)) * np_ifft2c(cropped), axis=0)
    np.testing.assert_allclose(combined, expected, rtol=0, atol=1e-5)


def test_precropped_maps_equal_cropped_full_maps(make_fastmri, tmp_path):
    folder = make_fastmri(files=1, slices=2, coils=3, shape=(64, 48))
    cropped_maps = str(tmp_path / "maps_cropped")
    os.makedirs(cropped_maps)
    write_maps(os.path.join(cropped_maps, "file1000.h5"), _np_crop(folder.maps["file1000"], 40))
    config = _config()
    full = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)[1]
    pre = datasets.MultiCoilSliceDataset(folder.root, cropped_maps, config)[1]
    torch.testing.assert_close(full["maps"], pre["maps"], rtol=0, atol=0)
    torch.testing.assert_close(full["kspace"], pre["kspace"], rtol=0, atol=0)


def test_all_zero_slice_stays_zero():
    zeros = torch.zeros(2, 8, 8, dtype=torch.complex64)
    maps = torch.ones(2, 8, 8, dtype=torch.complex64)
    for kind in datasets.NORMALIZE_TYPES:
        assert torch.count_nonzero(datasets.normalize_kspace(zeros, maps, kind, 1.5)) == 0


# --------------------------------------------------------------------------------------------------------------
# Slice selection and the index cache.
# --------------------------------------------------------------------------------------------------------------

def test_skip_slices_and_short_volumes():
    assert list(datasets.kept_slices(10, 6)) == [6, 7, 8, 9]
    assert list(datasets.kept_slices(4, 6)) == [3]
    assert list(datasets.kept_slices(3, 0)) == [0, 1, 2]


def test_train_mode_skips_first_slices_test_mode_keeps_all(make_fastmri):
    folder = make_fastmri(files=2, slices=8)
    config = _config(data__root=folder.root, training__skip_slices=6)
    config.data.test_roots.knee = folder.root
    config.sampling.datashift = "knee"
    train = datasets.make_dataset(config, "train")
    assert [s for _, s in train.slices] == [6, 7, 6, 7]
    test = datasets.make_dataset(config, "test")
    assert [s for _, s in test.slices] == list(range(8)) * 2


def test_index_is_cached_and_invalidated_when_a_file_changes(make_fastmri, monkeypatch):
    folder = make_fastmri(files=2, slices=3)
    config = _config()
    datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)
    assert datasets.index_cache_path(folder.root, folder.maps_root).is_file()

    reads = []
    original = index._read_shape
    monkeypatch.setattr(index, "_read_shape", lambda path, *a: reads.append(path) or original(path, *a))
    assert len(datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)) == 6
    assert reads == []  # every shape came from the cache

    path = os.path.join(folder.root, "file1001.h5")
    write_fastmri_kspace(path, np.ones((5, 4, 64, 48), np.complex64))
    write_maps(os.path.join(folder.maps_root, "file1001.h5"), np.ones((5, 4, 64, 48), np.complex64))
    os.utime(path, ns=(1, 1))  # a different modification time even on coarse-clock file systems
    assert len(datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)) == 3 + 5
    assert sorted(os.path.basename(p) for p in reads) == ["file1001.h5", "file1001.h5"]


def test_index_cache_does_not_write_into_data_folders(make_fastmri):
    folder = make_fastmri(files=1)
    before = sorted(os.listdir(folder.root)), sorted(os.listdir(folder.maps_root))
    datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config())
    assert (sorted(os.listdir(folder.root)), sorted(os.listdir(folder.maps_root))) == before


# --------------------------------------------------------------------------------------------------------------
# Loaders and collation.
# --------------------------------------------------------------------------------------------------------------

def test_collate_pads_coils_and_leaves_sense_adjoint_unchanged(make_fastmri):
    folder = make_fastmri(files=2, slices=1, coils=[3, 5])
    config = _config(data__root=folder.root)
    loader = datasets.get_dataset(config, "train")
    batch = next(iter(loader))
    assert batch["kspace"].shape == (2, 5, 32, 32) and batch["maps"].shape == (2, 5, 32, 32)
    assert sorted(batch["fname"]) == ["file1000", "file1001"] and batch["slice"].tolist() == [0, 0]
    ones = torch.ones(())
    for b, name in enumerate(batch["fname"]):
        item = loader.dataset[["file1000", "file1001"].index(name)]
        coils = item["kspace"].shape[0]
        assert torch.count_nonzero(batch["kspace"][b, coils:]) == 0
        torch.testing.assert_close(sense_adjoint(batch["kspace"][b:b + 1], batch["maps"][b:b + 1], ones),
                                   sense_adjoint(item["kspace"][None], item["maps"][None], ones))


def test_get_dataset_modes_and_loader_settings(make_fastmri):
    train, val = make_fastmri("train", files=2, slices=3), make_fastmri("val", files=1, slices=3)
    config = _config(data__root=train.root, data__eval_root=val.root)
    config.training.batch_size = 4
    loader = datasets.get_dataset(config, "train")
    assert loader.batch_size == 4 and loader.drop_last and len(loader) == 1 and not loader.pin_memory
    assert isinstance(loader.sampler, datasets.EpochSampler) and loader.sampler.shuffle
    eval_loader = datasets.get_dataset(config, "eval")
    assert eval_loader.dataset.kspace_root == val.root and eval_loader.dataset.maps_root == val.maps_root
    assert not eval_loader.drop_last and len(eval_loader.dataset) == 3
    first = [(b["fname"], b["slice"].tolist()) for b in eval_loader]
    assert first == [(b["fname"], b["slice"].tolist()) for b in eval_loader]  # file order, every time
    assert first[0] == (["file1000"] * 3, [0, 1, 2])
    config.device = "cuda:0"
    assert datasets.get_dataset(config, "eval").pin_memory


def test_train_loader_epochs_are_seeded_and_resume_part_way(make_fastmri):
    folder = make_fastmri(files=2, slices=4)
    config = _config(data__root=folder.root)
    dataset = datasets.make_dataset(config, "train")

    def order(epoch, skip=0):
        return [(f, s) for b in datasets.train_loader(dataset, config, epoch, skip)
                for f, s in zip(b["fname"], b["slice"].tolist())]

    assert order(3) == order(3) and order(3) != order(4) and sorted(order(3)) == sorted(order(4))
    assert order(3, skip=2) == order(3)[2 * config.training.batch_size:]


def test_loader_with_worker_processes(make_fastmri):
    folder = make_fastmri(files=2, slices=2)
    config = _config(data__root=folder.root, training__num_workers=2)
    batches = list(datasets.get_dataset(config, "train"))
    assert len(batches) == 2 and all(b["kspace"].shape == (2, 4, 32, 32) for b in batches)


def test_distributed_sampler_when_process_group_is_initialised(make_fastmri, tmp_path):
    folder = make_fastmri(files=2, slices=2)
    config = _config(data__root=folder.root)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = datasets.get_dataset(config, "train")
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and loader.sampler.shuffle
        assert len(list(loader)) == 2
    finally:
        torch.distributed.destroy_process_group()


def test_explicit_maps_roots_are_used(make_fastmri, tmp_path):
    folder = make_fastmri("knee", files=1, slices=2)
    moved = str(tmp_path / "elsewhere")
    os.rename(folder.maps_root, moved)
    config = _config(data__root=folder.root, data__maps_root=moved)
    assert datasets.make_dataset(config, "train").maps_root == moved
    config.data.test_roots.knee, config.data.test_maps_roots.knee = folder.root, moved
    config.sampling.datashift = "knee"
    assert len(datasets.make_dataset(config, "test")) == 2


def test_bundled_phantom_test_set_loads_with_alias():
    config = _config(image_size=320, sampling__datashift="photom")
    config.data.test_roots.phantom = os.path.join(REPO, "data/phantom/test")
    loader = datasets.get_dataset(config, "test")
    slices = [loader.dataset[i] for i in range(len(loader.dataset))]
    assert len(slices) >= 4
    images = [sense_adjoint(s["kspace"][None], s["maps"][None], torch.ones(()))[0, 0] for s in slices]
    for i in range(len(images)):
        for j in range(i):
            assert not torch.allclose(images[i].abs(), images[j].abs(), atol=1e-2)
    assert len({s["kspace"].shape[0] for s in slices}) > 1  # coil counts differ between the bundled volumes
    batch = next(iter(loader))
    assert batch["kspace"].shape[-2:] == (320, 320)


def test_committed_phantom_data_is_small():
    total = sum(os.path.getsize(os.path.join(d, f)) for sub in ("test", "test_maps")
                for d in [os.path.join(REPO, "data/phantom", sub)] for f in os.listdir(d))
    assert total <= 10e6


# --------------------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file; skip_broken warns and leaves the file out.
# --------------------------------------------------------------------------------------------------------------

def test_missing_and_empty_folders(tmp_path):
    config = _config(data__root=str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=r"absent does not exist.*data\.root"):
        datasets.get_dataset(config, "train")
    os.makedirs(tmp_path / "empty")
    os.makedirs(tmp_path / "empty_maps")
    config.data.root = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"empty holds no \.h5 files"):
        datasets.get_dataset(config, "train")


def test_missing_maps_folder_and_file(make_fastmri):
    folder = make_fastmri(files=2)
    os.remove(os.path.join(folder.maps_root, "file1001.h5"))
    with pytest.raises(datasets.DataError, match=r"file1001\.h5 has no maps file .*generate_smaps_fastMRI\.py"):
        datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config())
    with pytest.raises(FileNotFoundError, match=r"maps folder .*nowhere \(for .*\) does not exist"):
        datasets.MultiCoilSliceDataset(folder.root, folder.maps_root + "_nowhere", _config())


def _break_no_kspace(folder):
    path = os.path.join(folder.root, "file1001.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=np.zeros((3, 32, 32), np.float32))
    return path, r"file1001\.h5 has no 'kspace' dataset"


def _break_truncated(folder):
    path = os.path.join(folder.root, "file1001.h5")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path, r"file1001\.h5 is not a readable HDF5 file.*truncated"


def _break_maps_shape(folder):
    write_maps(os.path.join(folder.maps_root, "file1001.h5"), np.ones((3, 4, 16, 16), np.complex64))
    return os.path.join(folder.maps_root, "file1001.h5"), r"file1001\.h5: 's_maps' is 16×16 per coil"


def _break_maps_coils(folder):
    write_maps(os.path.join(folder.maps_root, "file1001.h5"), np.ones((3, 2, 64, 48), np.complex64))
    return os.path.join(folder.maps_root, "file1001.h5"), r"'s_maps' has 3 slices × 2 coils but .*file1001\.h5"


def _break_slice_count(folder):
    write_maps(os.path.join(folder.maps_root, "file1001.h5"), np.ones((5, 4, 64, 48), np.complex64))
    return os.path.join(folder.maps_root, "file1001.h5"), r"'s_maps' has 5 slices × 4 coils but .* 3 slices"


def _break_single_coil(folder):
    path = os.path.join(folder.root, "file1001.h5")
    write_fastmri_kspace(path, np.ones((3, 64, 48), np.complex64))
    return path, r"file1001\.h5: 'kspace' is complex64 of shape \[3, 64, 48\]"


def _break_fifo(folder):
    path = os.path.join(folder.root, "file1001.h5")
    os.remove(path)
    os.mkfifo(path)  # opening it for reading would block until a writer appears
    return path, r"file1001\.h5 is a named pipe \(FIFO\), not an HDF5 file"


def _break_maps_folder(folder):
    path = os.path.join(folder.maps_root, "file1001.h5")
    os.remove(path)
    os.mkdir(path)
    return path, r"maps.*file1001\.h5 is a folder, not an HDF5 file"


def _break_dangling_link(folder):
    path = os.path.join(folder.root, "file1001.h5")
    os.remove(path)
    os.symlink(os.path.join(folder.root, "moved_away.h5"), path)
    return path, r"file1001\.h5 cannot be opened \(No such file or directory; a dangling link\?\)"


@pytest.mark.parametrize("damage", [_break_no_kspace, _break_truncated, _break_maps_shape, _break_maps_coils,
                                    _break_slice_count, _break_single_coil, _break_fifo, _break_maps_folder,
                                    _break_dangling_link])
def test_broken_file_is_named_or_skipped(make_fastmri, damage):
    folder = make_fastmri(files=3, slices=3)
    _, message = damage(folder)
    config = _config()
    with pytest.raises(datasets.DataError, match=message) as err:
        datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)
    assert "data.skip_broken" in str(err.value)
    with pytest.warns(UserWarning, match=r"skipping .*file1001\.h5"):
        dataset = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config, skip_broken=True)
    assert sorted({dataset.volumes[v].name for v, _ in dataset.slices}) == ["file1000", "file1002"]
    assert dataset[len(dataset) - 1]["kspace"].shape == (4, 32, 32)


def test_skip_broken_from_config(make_fastmri):
    folder = make_fastmri(files=2, slices=3)
    _break_truncated(folder)
    config = _config(data__root=folder.root, data__skip_broken=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = datasets.make_dataset(config, "train")
    assert len(dataset) == 3 and any("file1001.h5" in str(w.message) for w in caught)


def test_matrix_smaller_than_image_size(make_fastmri):
    folder = make_fastmri(files=1, shape=(30, 40))
    with pytest.raises(datasets.DataError, match=r"file1000\.h5: the k-space matrix 30×40 is smaller than "
                                                 r"data\.image_size=32"):
        datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config())


def test_batch_larger_than_dataset(make_fastmri):
    folder = make_fastmri(files=1, slices=3)
    config = _config(data__root=folder.root, training__batch_size=8)
    with pytest.raises(datasets.DataError, match=r"training\.batch_size=8 is larger than the 3 training slices .*"
                                                 r"train.*--config\.training\.batch_size=3"):
        datasets.get_dataset(config, "train")


def test_unknown_datashift_mode_and_normalisation(make_fastmri):
    config = _config(sampling__datashift="liver")
    with pytest.raises(ValueError, match=r"unknown sampling\.datashift 'liver'.*'brain', 'knee', 'phantom'"):
        datasets.get_dataset(config, "test")
    with pytest.raises(ValueError, match=r"unknown dataset mode 'sample'"):
        datasets.get_dataset(config, "sample")
    folder = make_fastmri(files=1)
    with pytest.raises(ValueError, match=r"unknown data\.normalize_type 'l2'"):
        datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config(normalize_type="l2"))


def test_file_damaged_after_indexing_names_file_and_slice(make_fastmri):
    folder = make_fastmri(files=1, slices=2)
    dataset = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config())
    os.remove(os.path.join(folder.root, "file1000.h5"))
    with pytest.raises(datasets.SliceError, match=r"file1000\.h5: 'kspace' of slice 1 cannot be read \(.*\); the "
                                                  r"file changed or is damaged: replace it, or set data\.skip_broken"):
        dataset[1]


def test_non_finite_slice_is_named_or_skipped(make_fastmri, caplog):
    folder = make_fastmri(files=1, slices=3)
    path = os.path.join(folder.root, "file1000.h5")
    with h5py.File(path, "r+") as f:
        data = f["kspace"][2]
        data[1, 30, 20] = np.inf
        f["kspace"][2] = data
    with pytest.raises(datasets.DataError, match=r"file1000\.h5: 'kspace' of slice 2 holds 1 non-finite values "
                                                 r"\(NaN or Inf\).*data\.skip_broken=True"):
        datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config())[2]
    dataset = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, _config(), skip_broken=True)
    assert dataset[2] is None and "skipping a broken slice" in caplog.text
    assert datasets.first_slices(dataset, 3)["slice"].tolist() == [0, 1] and datasets.collate_multicoil([None]) is None
    dataset.slices = dataset.slices[2:]
    with pytest.raises(datasets.DataError, match=r"every slice in .*train is broken; replace the files"):
        datasets.first_slices(dataset, 3)


def test_a_worker_that_fails_on_a_damaged_file_raises_its_one_line_error(make_fastmri):
    folder = make_fastmri(files=2, slices=2)
    config = _config(training__num_workers=2)
    dataset = datasets.MultiCoilSliceDataset(folder.root, folder.maps_root, config)
    path = os.path.join(folder.root, "file1001.h5")
    with open(path, "r+b") as f:  # damaged after indexing: its slices can no longer be read
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(datasets.SliceError) as err:
        list(datasets.ordered_loader(dataset, config, batch_size=1))
    message = str(err.value)
    assert (err.value.path, err.value.key, err.value.slice_idx) == (path, "kspace", 0)
    assert message.startswith(f"{path}: 'kspace' of slice 0 cannot be read (") and "\n" not in message
    assert message.endswith("replace it, or set data.skip_broken=True to skip broken slices")


def test_a_missing_folder_of_a_bundled_set_names_its_command(tmp_path):
    brain = os.path.join(REPO, "data", "brain_demo", "train")
    command, generated = datasets.data_command(brain, 128)
    assert not generated and command.startswith("pip download nilearn --no-deps -d /tmp/wheels && python "
                                                 "data_prepare/generate_brain_demo.py --source /tmp/wheels --out ")
    assert command.endswith(f"{os.path.dirname(brain)} --size 128")
    command, generated = datasets.data_command(os.path.join(REPO, "data", "phantom", "val"), 64)
    assert generated and "generate_smaps_phantom.py" in command and "--size 64 --train 200 --val 8" in command
    assert datasets.data_command(str(tmp_path / "knee" / "train"), 320) is None
    with pytest.raises(FileNotFoundError, match=r"knee does not exist; give a folder of fastMRI multi-coil"):
        datasets.list_h5_files(str(tmp_path / "knee"))
