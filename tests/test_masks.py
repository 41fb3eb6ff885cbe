"""Mask families: published deterministic rules, seeded random families, get_mask loading and errors."""
import numpy as np
import pytest
import torch

from configs.tiny import get_config
from utils import masks
from utils.generate_mask import main as generate_main
from runners import build


@pytest.mark.parametrize("size", [320, 33, 64])
def test_uniform_rule(size):
    acc, acs = 4, 8
    m = masks.make_mask("uniform", size, acc=acc, acs=acs)
    centre = list(range((size - acs) // 2, (size + acs) // 2))
    outer = [c for c in range(size) if c not in centre]
    expected = np.zeros(size)
    expected[centre] = 1
    expected[outer[0::acc]] = 1
    np.testing.assert_array_equal(m, np.tile(expected, (size, 1)))
    assert m.dtype == np.float32 and set(np.unique(m)) == {0.0, 1.0}


def test_published_uniform_acc10_acs24_columns():
    m = masks.make_mask("uniform", 320, acc=10, acs=24)
    cols = np.flatnonzero(m[0])
    assert set(range(148, 172)) <= set(cols)
    assert cols[0] == 0 and 10 in cols and 20 in cols
    assert len(cols) == 24 + len(range(0, 296, 10))


@pytest.mark.parametrize("size,acs", [(320, 16), (33, 5), (32, 5)])
def test_low_frequency_and_center(size, acs):
    lf = masks.make_mask("low_frequency", size, acs=acs)
    cols = np.flatnonzero(lf[0])
    np.testing.assert_array_equal(cols, np.arange((size - acs) // 2, (size + acs) // 2))
    assert (lf == lf[0]).all()
    c = masks.make_mask("center", size, acs=acs)
    s, e = int((size - acs) / 2), int((size + acs) / 2)
    expected = np.zeros((size, size))
    expected[s:e, s:e] = 1
    np.testing.assert_array_equal(c, expected)


def test_dc_inside_low_frequency_region():
    for size in (31, 32):
        assert masks.make_mask("low_frequency", size, acs=4)[0, size // 2] == 1
        assert masks.make_mask("center", size, acs=4)[size // 2, size // 2] == 1


@pytest.mark.parametrize("kind", ["cartesian", "random_uniform"])
def test_random_families_are_seeded_and_keep_acs(kind):
    a = masks.make_mask(kind, 320, acc=8, acs=24, seed=3)
    b = masks.make_mask(kind, 320, acc=8, acs=24, seed=3)
    c = masks.make_mask(kind, 320, acc=8, acs=24, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[0, 148:172].all() and (a == a[0]).all()
    assert a[0].sum() == 320 // 8


def test_cartesian_is_denser_near_the_centre():
    counts = np.zeros(320)
    for seed in range(40):
        counts += masks.make_mask("cartesian", 320, acc=8, acs=8, seed=seed)[0]
    centre_band = counts[120:200].mean()
    edges = np.r_[counts[:40], counts[-40:]].mean()
    assert centre_band > 2 * edges


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mask type 'radial'"):
        masks.make_mask("radial", 32, acs=4)
    with pytest.raises(ValueError, match="needs an acceleration"):
        masks.make_mask("uniform", 32, acs=4)
    with pytest.raises(ValueError, match="needs acs"):
        masks.make_mask("low_frequency", 32, acs=40)


def test_names():
    assert masks.mask_name("uniform", 10, 24) == "uniform_acc10_acs24"
    assert masks.mask_name("low_frequency", None, 16) == "low_frequency_acs16"
    assert masks.mask_name("center", None, 24) == "center_length24"
    assert masks.mask_name("cartesian", 8, 18) == "cartesian_acc8_acs18"


def test_get_mask_generates_loads_and_checks_size(tmp_path):
    config = get_config()
    config.data.mask_root = str(tmp_path)
    lf = build.lowfreq_mask(config)
    assert lf.shape == (1, 1, 32, 32) and lf.dtype == torch.float32 and lf.device.type == "cpu"
    np.testing.assert_array_equal(lf[0, 0].numpy(), masks.make_mask("low_frequency", 32, acs=4))
    sample = build.sample_mask(config)
    np.testing.assert_array_equal(sample[0, 0].numpy(), masks.make_mask("uniform", 32, acc=4, acs=6))

    custom = np.zeros((32, 32), np.float32)
    custom[:, ::2] = 1
    masks.save_mask(str(tmp_path / "uniform_acc4_acs6.mat"), custom)
    np.testing.assert_array_equal(build.sample_mask(config)[0, 0].numpy(), custom)

    masks.save_mask(str(tmp_path / "uniform_acc4_acs6.mat"), np.ones((16, 16), np.float32))
    with pytest.raises(ValueError, match=r"uniform_acc4_acs6.mat is 16×16 but data.image_size is 32"):
        build.sample_mask(config)
    config.sampling.mask_type = "spiral"
    with pytest.raises(ValueError, match="unknown sampling.mask_type 'spiral'"):
        build.sample_mask(config)


def test_shipped_masks_equal_the_generator():
    config = get_config()
    config.data.image_size = 320
    for kind, acc, acs in [("uniform", 10, 24), ("low_frequency", None, 16), ("center", None, 24)]:
        config.sampling.mask_type, config.sampling.acc, config.sampling.acs = kind, acc, acs
        shipped = masks.load_mask(f"mask/{masks.mask_name(kind, acc, acs)}.mat")
        np.testing.assert_array_equal(shipped, masks.make_mask(kind, 320, acc=acc, acs=acs))


def test_generate_mask_cli(tmp_path, capsys):
    assert generate_main(["--type", "uniform", "--acc", "4", "--acs", "8", "--size", "64", "--out", str(tmp_path)]) == 0
    m = masks.load_mask(str(tmp_path / "uniform_acc4_acs8.mat"))
    np.testing.assert_array_equal(m, masks.make_mask("uniform", 64, acc=4, acs=8))
    assert "uniform_acc4_acs8.mat" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        generate_main(["--type", "uniform", "--acs", "8", "--out", str(tmp_path)])


def test_shipped_rule_masks_serve_other_sizes():
    config = get_config()
    config.data.mask_root = "mask"
    config.sampling.acs = 24
    config.sampling.acc = 4
    got = build.sample_mask(config)
    np.testing.assert_array_equal(got[0, 0].numpy(), masks.make_mask("uniform", 32, acc=4, acs=24))
    config.sampling.mask_type, config.sampling.acc = "random_uniform", 10
    with pytest.raises(ValueError, match="random_uniform_acc10_acs24.mat is 320×320"):
        build.sample_mask(config)
