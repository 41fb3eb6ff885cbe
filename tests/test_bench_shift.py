"""The shift benchmark's table (bench/bench_shift.py): rows merged from runs over different numbers of slices."""
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_shift  # noqa: E402


def metrics_folder(path, psnrs):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.csv"), "w") as f:
        f.write("fname,slice,psnr\n" + "".join(f"test,{i},{p}\n" for i, p in enumerate(psnrs)))
    return str(path)


def test_a_row_merged_from_runs_over_other_slice_counts_says_so(tmp_path):
    entry = {"row": "fastmri", "acc": 8, "noise_amplification": 9.2, "sigma_ratio": 1.1}
    for method, psnrs in (("l1wavelet", [30.0, 29.0, 28.0]), ("hfssde", [32.0, 30.5, 31.0]),
                          ("hfssde-pc", [27.0])):
        folder = metrics_folder(tmp_path / method, psnrs)
        entry[method] = {"psnr": sum(psnrs) / len(psnrs), "ssim": 0.9, "folder": folder, "n_slices": len(psnrs)}
    entry = bench_shift.with_margin(entry)
    assert entry["worst_margin"] == 1.5  # over the three slices both methods have
    line = bench_shift.format_table([entry], ["l1wavelet", "hfssde", "hfssde-pc"], header=False)
    assert "27.00 / 0.900 (1 slice)" in line and "29.00 / 0.900 |" in line and "31.17 / 0.900 |" in line
    merged = bench_shift.merge_results(str(tmp_path / "results.json"), [entry])
    assert merged == [entry]


def test_cells_of_entries_without_slice_counts_carry_no_note():
    """Entries of a results.json written before slice counts were kept, merged with newer ones."""
    entry = {"row": "project", "acc": 8, "noise_amplification": 8.8, "sigma_ratio": 1.4,
             "l1wavelet": {"psnr": 32.0, "ssim": 0.88}, "hfssde": {"psnr": 34.0, "ssim": 0.96},
             "hfssde-acq": {"psnr": 34.1, "ssim": 0.96, "n_slices": 3},
             "vpsde-acq": {"psnr": 33.9, "ssim": 0.95, "n_slices": 3}}
    line = bench_shift.format_table([entry], ["l1wavelet", "hfssde", "hfssde-acq", "vpsde-acq"], header=False)
    assert "slice" not in line and "32.00 / 0.880 | 34.00 / 0.960 | 34.10 / 0.960 | 33.90 / 0.950 |" in line


def test_a_row_volume_made_from_other_heads_is_refused(tmp_path, monkeypatch):
    """A row's volumes are simulated once per --out; another set of test images (--heads) must not reuse them."""

    def simulate(images, rng, acquisition):
        kspace = rng.standard_normal((len(images), 2, 8, 8)) + 0j
        return kspace.astype(np.complex64), np.ones_like(kspace, np.complex64)

    monkeypatch.setattr(bench_shift, "simulate_volume", simulate)
    heads = {"val": np.zeros((2, 8, 8)), "test": np.zeros((3, 8, 8))}
    folders = bench_shift.row_data(str(tmp_path), "fastmri", heads)
    assert bench_shift.row_data(str(tmp_path), "fastmri", heads) == folders  # the same images: reused
    more = {**heads, "test": np.concatenate([heads["test"], np.ones((1, 8, 8))])}
    with pytest.raises(SystemExit, match="fastmri_test.h5 was simulated from other test images"):
        bench_shift.row_data(str(tmp_path), "fastmri", more)
    other = {**heads, "test": np.ones((3, 8, 8))}  # as many slices, other content
    with pytest.raises(SystemExit, match="another --out"):
        bench_shift.row_data(str(tmp_path), "fastmri", other)


def test_the_mismatch_set_is_made_from_the_listed_images_and_a_lesioned_slice():

    brain = np.zeros((bench_shift.SIZE, bench_shift.SIZE))
    images = bench_shift.mismatch_images(brain)
    assert images.shape == (len(bench_shift.MISMATCH_IMAGES) + 1, bench_shift.SIZE, bench_shift.SIZE)
    assert images.min() >= 0 and np.all(images.max(axis=(1, 2)) <= 1)
    for row, col, _, value in bench_shift.LESIONS:
        assert images[-1, row, col] == value
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    brain = np.load(os.path.join(root, bench_shift.HEADS))["test"][2].astype(np.float64)  # make_heads' test slice
    committed = np.load(os.path.join(root, bench_shift.MISMATCH))
    np.testing.assert_allclose(committed, bench_shift.mismatch_images(brain), atol=1e-6)  # what the code makes


def test_a_heads_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    for path, reason in ((tmp_path / "missing.nii.gz", "No such file"), (tmp_path / "notes.txt", "unsupported")):
        with pytest.raises(SystemExit, match=f"--heads {re.escape(str(path))}: .*{reason}"):
            bench_shift.load_heads([str(path)])


def test_only_heads_tests_on_the_given_images_alone(tmp_path):
    image = np.zeros((40, 30))
    image[10:30, 5:25] = 2.0
    np.save(tmp_path / "two.npy", np.stack([image, image[::-1]]))
    both, alone = bench_shift.load_heads([str(tmp_path / "two.npy")]), bench_shift.load_heads(
        [str(tmp_path / "two.npy")], only=True)
    assert alone["test"].shape == (2, bench_shift.SIZE, bench_shift.SIZE) and alone["test"].max() == 1.0
    np.testing.assert_array_equal(both["test"][-2:], alone["test"])
    np.testing.assert_array_equal(both["val"], alone["val"])
    with pytest.raises(SystemExit, match="--only-heads .* --heads"):
        bench_shift.load_heads([], only=True)


def test_heads_without_signal_are_refused_and_nan_pixels_are_zero(tmp_path):
    image = np.zeros((32, 32))
    image[8:24, 8:24] = 3.0
    spotted = image.copy()
    spotted[0, 0] = np.nan
    np.save(tmp_path / "spotted.npy", spotted)
    loaded = bench_shift.load_heads([str(tmp_path / "spotted.npy")], only=True)["test"]
    assert np.isfinite(loaded).all() and loaded.max() == 1.0
    np.save(tmp_path / "blank.npy", np.stack([image, np.full((32, 32), np.nan)]))
    with pytest.raises(SystemExit, match=r"blank.npy: slice\(s\) \[1\] hold no signal"):
        bench_shift.load_heads([str(tmp_path / "blank.npy")])


def test_head_slices_choose_the_slices_of_each_heads_file(tmp_path):
    stack = np.zeros((4, 32, 32))
    for i in range(4):
        stack[i, 4 + i:20, 6:26] = i + 1.0
    np.save(tmp_path / "stack.npy", stack)
    whole = bench_shift.load_heads([str(tmp_path / "stack.npy")], only=True)["test"]
    for spec, picked in (("all", [0, 1, 2, 3]), ("1:4:2", [1, 3]), ("2,0", [2, 0])):
        chosen = bench_shift.load_heads([str(tmp_path / "stack.npy")], only=True, slices=spec)["test"]
        np.testing.assert_array_equal(chosen, whole[picked])
    with pytest.raises(SystemExit, match=r"--heads .*stack.npy: slices 7 are not all in 0…3"):
        bench_shift.load_heads([str(tmp_path / "stack.npy")], slices="7")


def test_the_second_unseen_head_loads_as_its_listed_slices():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    colin = bench_shift.load_heads([os.path.join(root, bench_shift.COLIN)], only=True)["test"]
    assert colin.shape == (len(bench_shift.COLIN_SLICES), bench_shift.SIZE, bench_shift.SIZE)
    assert colin.min() == 0.0 and colin.max() <= 1.0 and np.all(colin.max(axis=(1, 2)) > 0.8)
    assert all((s > 0.1).mean() > 0.3 for s in colin)  # a head fills each slice, not an empty border


def test_a_folder_of_another_setting_under_out_ends_the_run_in_one_line(tmp_path):
    from runners.identity import Identity
    from runners.outputs import claim_output_folder

    folder = tmp_path / "uncertainty" / "fastmri"
    folder.mkdir(parents=True)
    claim_output_folder(Identity("x", {"uncertainty": {"detail_power": 0.0}}), str(folder), [])

    def compute():
        claim_output_folder(Identity("x", {"uncertainty": {"detail_power": 0.2}}), str(folder), [])

    with pytest.raises(SystemExit, match=rf"^--out {re.escape(str(tmp_path))}: {re.escape(str(folder))} holds "
                                         r"reconstructions of another setting \(differs in uncertainty.detail_power\)"):
        bench_shift.run_entries(str(tmp_path), compute)
