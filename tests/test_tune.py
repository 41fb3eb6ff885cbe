"""`main.py --mode tune`: the coordinate search against an exhaustive grid, resuming, and the best-settings file."""
import csv
import itertools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from configs.hfssde.phantom_demo import get_config as phantom_config
from runners.reconstructor import apply_tuned
from runners.tune import Tuner, _snap, coordinate_search, search_axes, tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_AXES = [("snr_accelerated", (0.04, 0.08, 0.16, 0.32), True), ("mse", (0.25, 1.0, 4.0), True),
             ("corrector_mse", (0.1, 1.0, 10.0), True), ("support_mask", (False, True), False)]


def test_coordinate_search_finds_the_optimum_of_a_smooth_objective_with_few_trials():
    axes = [("a", tuple(range(9)), True), ("b", tuple(range(9)), True), ("c", (0, 1), False)]
    calls = {}

    def objective(p):
        calls[p] = -((p[0] - 6) ** 2 + 0.5 * (p[1] - 2) ** 2 + (p[0] - 6) * (p[1] - 2) * 0.3) + p[2]
        return calls[p]

    point, value = coordinate_search(objective, axes, (0, 0, 0))
    assert point == (6, 2, 1) and len(calls) <= 9 * 9 * 2 // 4


def tune_config():
    config = phantom_config()
    config.data.eval_root = os.path.join(ROOT, "data/phantom_demo/test")
    config.sampling.checkpoint = os.path.join(ROOT, config.sampling.checkpoint)
    config.sampling.method, config.sampling.N, config.sampling.num_samples = "pc", 3, 1
    config.sampling.mse = config.sampling.corrector_mse = 1.0
    config.sampling.snr_accelerated = 0.16
    config.device = "cpu"
    return config


@pytest.mark.slow
def test_search_is_within_0_2_db_of_the_exhaustive_grid_in_a_quarter_of_its_trials(tmp_path):
    tuner = Tuner(tune_config(), str(tmp_path), "psnr", 1, TINY_AXES)
    found = tuner.search()
    searched = len(tuner.trials.rows)
    grid = list(itertools.product(*(range(len(g)) for _, g, _ in TINY_AXES)))
    best = max(tuner.objective(p) for p in grid)
    assert searched <= len(grid) / 4
    assert found["psnr"] >= best - 0.2
    assert len(tuner.trials.rows) == len(grid)


def test_a_rerun_redoes_no_trial_and_best_json_is_one_override(tmp_path, monkeypatch):
    axes = [("snr_accelerated", (0.08, 0.16), True), ("mse", (0.5, 1.0), True)]
    first = Tuner(tune_config(), str(tmp_path), "ssim", 1, axes).search()
    with open(os.path.join(first["folder"], "trials.csv")) as f:
        rows = list(csv.DictReader(f))
    again = Tuner(tune_config(), str(tmp_path), "ssim", 1, axes)
    monkeypatch.setattr(again, "_run", lambda values: pytest.fail(f"trial {values} was redone"))
    assert again.search()["sampling"] == first["sampling"]
    assert len(rows) == first["trials"] and os.path.exists(os.path.join(first["folder"], "trials.png"))
    config = tune_config()
    config.sampling.tuned = os.path.join(first["folder"], "best.json")
    apply_tuned(config)
    for key, value in first["sampling"].items():
        assert config.sampling[key] == value


def test_bad_tuned_file_is_named(tmp_path):
    config = tune_config()
    config.sampling.tuned = str(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="missing.json: not a readable best.json"):
        apply_tuned(config)
    (tmp_path / "odd.json").write_text(json.dumps({"sampling": {"snr_typo": 1}}))
    config.sampling.tuned = str(tmp_path / "odd.json")
    with pytest.raises(ValueError, match="unknown sampling keys"):
        apply_tuned(config)


def test_tune_mode_through_main_prints_the_command(tmp_path):
    config_file = os.path.join(ROOT, "configs/vp/phantom_demo.py")
    overrides = ["--config.sampling.method=l1wavelet", "--config.sampling.l1_iters=5",
                 f"--config.data.eval_root={ROOT}/data/phantom_demo/test", "--config.device=cpu"]
    workdir = tmp_path / "my results"  # the printed command quotes a path with a space
    result = subprocess.run([sys.executable, "main.py", "--mode", "tune", "--config", config_file,
                             f"--workdir={workdir}", "--tune_slices=1"] + overrides,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [path] = (workdir / "tune").glob("*/best.json")
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command == ["python", "main.py", "--mode", "sample", "--config", config_file, *overrides,
                       f"--config.sampling.tuned={path}"] and "l1_lambda" in result.stdout
    best = json.loads(path.read_text())
    assert set(best["sampling"]) == {"l1_lambda"}
    with open(path.parent / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    top = max(trials, key=lambda row: float(row["psnr"]))  # the best trial's settings and scores, as recorded
    assert len(trials) == best["trials"] >= 3 and len({row["psnr"] for row in trials}) > 1
    assert best["sampling"]["l1_lambda"] == float(top["l1_lambda"]) and best["psnr"] == float(top["psnr"])


def test_snap_takes_the_nearest_grid_value_on_a_log_scale():
    grid = (0.01, 0.1, 1.0)
    assert [_snap(v, grid) for v in (0.1, 0.02, 0.04, 0.5, 5.0, 1e-6)] == [1, 0, 1, 2, 2, 0]
    assert _snap("cg", ("none", "replace", "cg")) == 2 and _snap(True, (False, True)) == 1
    assert _snap("other", ("none", "cg")) == 0  # a value off the grid starts at the first choice


def test_search_axes_are_fields_of_the_method_settings():
    config = tune_config()
    assert [key for key, _, _ in search_axes(config)] == ["snr", "mse", "corrector_mse", "support_mask",
                                                           "final_dc", "denoise"]
    config.sampling.method = "ode"  # no corrector: no snr and no corrector weight to search
    assert [key for key, _, _ in search_axes(config)] == ["mse", "support_mask", "final_dc", "denoise"]
    config.sampling.method = "ddim"
    assert [key for key, _, _ in search_axes(config)] == ["eta", "dc_lambda", "dc_iters", "support_mask"]
    config.sampling.method = "sense"
    assert search_axes(config) == [("cg_iters", (3, 5, 8, 12, 20, 30, 50), True)]
    config.sampling.method = "zero_filled"
    with pytest.raises(ValueError, match="sampling.method='zero_filled' has no settings to tune"):
        search_axes(config)


def test_tune_plans_reuses_and_stops_on_ctrl_c_with_its_trials_kept(tmp_path, monkeypatch, caplog):
    calls = []

    def fake_run(self, values):
        calls.append(values)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"psnr": 30.0 + len(calls), "ssim": 0.5, "seconds": 90.0}

    monkeypatch.setattr(Tuner, "_run", fake_run)
    caplog.set_level("INFO")
    with pytest.raises(SystemExit, match=r"tune: interrupted; 2 finished trials are kept in .*trials\.csv, rerun"):
        tune(tune_config(), str(tmp_path))
    assert re.search(r"tune: \d+ trials planned .*the first took 90 s, so about \d+ min in all", caplog.text)
    with open(next((tmp_path / "tune").glob("*/trials.csv"))) as f:
        assert len(list(csv.DictReader(f))) == 2
    caplog.clear()
    with pytest.raises(SystemExit, match="interrupted; 3 finished"):
        calls.clear()
        calls.append(None)
        tune(tune_config(), str(tmp_path))
    assert "reusing the 2 finished trials of" in caplog.text
