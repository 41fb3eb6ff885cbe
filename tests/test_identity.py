"""One identity for a result (runners/identity.py): reconstruction folders and tune trial tables differ whenever the
checkpoint content, the data, the slices or any sampler setting differ, and match otherwise."""
import dataclasses
import os

import pytest

import datasets
from runners import build
from runners.identity import differences, digest
from runners.reconstructor import Reconstructor
from tests.conftest import save_tiny_checkpoint


def identity(config, slices=None):
    dataset = datasets.make_dataset(config, "test")
    keys = [(dataset.volumes[v].name, s) for v, s in dataset.slices]
    return Reconstructor(config, "unused").identity(config, dataset.volumes, keys if slices is None else slices,
                                                    build.sample_mask(config))


def test_identity_matches_for_the_same_result_and_ignores_speed_and_batch(knee_test, tmp_path):
    config, _ = knee_test
    first = identity(config)
    config.sampling.batch_size, config.sampling.show_progress, config.training.num_workers = 1, True, 3
    config.sampling.output_dir = str(tmp_path / "elsewhere")
    again = identity(config)
    assert again.name == first.name and again.fields == first.fields
    assert first.name.startswith("knee_uniform_acc4_acs6_pc_hfssde_N3_") and len(first.hash) == 10


def test_identity_follows_the_checkpoint_content_not_its_name(knee_test, tmp_path):
    config, _ = knee_test
    first = identity(config)
    copy = str(tmp_path / "copy.pth")
    with open(config.sampling.checkpoint, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    config.sampling.checkpoint = copy
    assert identity(config).name == first.name  # the same weights under another name
    save_tiny_checkpoint(copy, config, seed=1)
    other = identity(config)  # other weights under the same name
    assert other.name != first.name and differences(first.fields, other.fields) == ["checkpoint"]


def test_identity_follows_the_data_and_the_slices(knee_test):
    config, folder = knee_test
    first = identity(config)
    keys = [tuple(pair) for pair in first.fields["slices"]]
    fewer = identity(config, keys[:2])
    assert fewer.name != first.name and differences(first.fields, fewer.fields) == ["slices"]
    path = os.path.join(folder.root, sorted(os.listdir(folder.root))[0])
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a file rewritten (here: touched)
    touched = identity(config)
    assert touched.name != first.name and differences(first.fields, touched.fields) == ["data.files"]
    config.data.normalize_coeff = 2.0
    assert "data.normalize_coeff" in differences(touched.fields, identity(config).fields)


@pytest.mark.parametrize("method", ["pc", "ode", "ddim", "sense", "l1wavelet", "zero_filled"])
def test_identity_follows_every_setting_of_every_method(knee_test, method):
    config, _ = knee_test
    config.sampling.method = method
    base = identity(config)
    settings = build.method_settings(config)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, bool):
            changed = not value
        elif isinstance(value, str):
            changed = {"final_dc": "replace", "predictor": "reverse_diffusion", "corrector": "none"}[field.name]
        else:
            changed = value / 2 if field.name == "eps" else value + 1  # eps stays in (0, 1)
        key = "N" if field.name == "steps" else "snr_accelerated" if field.name == "snr" else field.name
        old = config.sampling[key]
        config.sampling[key] = changed
        other = identity(config)
        config.sampling[key] = old
        assert other.name != base.name, field.name
        assert differences(base.fields, other.fields) == [f"settings.{field.name}"]


def test_identity_of_a_diffusion_result_follows_seed_samples_and_mask(knee_test):
    config, _ = knee_test
    base = identity(config)
    for key, value in (("seed", 7), ("num_samples", 2), ("use_ema", not config.sampling.use_ema), ("acc", 8)):
        old = config.sampling[key]
        config.sampling[key] = value
        assert identity(config).name != base.name, key
        config.sampling[key] = old


def test_digest_is_order_free_and_short():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1}) != digest({"a": 1, "b": [2, 1]})
    assert len(digest({})) == 10


def test_a_tune_table_ignores_only_the_searched_keys(knee_test):
    config, _ = knee_test
    dataset = datasets.make_dataset(config, "test")
    keys = [(dataset.volumes[0].name, 0)]

    def table(cfg):
        return Reconstructor(cfg, "unused").identity(cfg, dataset.volumes, keys, build.sample_mask(cfg),
                                                     exclude=("snr", "mse"))

    base = table(config)
    config.sampling.snr_accelerated, config.sampling.mse = 0.5, 3.0  # searched: the same trial table
    assert table(config).name == base.name
    config.sampling.corrector_mse = 3.0  # fixed during the search: another table
    assert table(config).name != base.name
