"""The bundled demo: a fast smoke run (default tier) and the full run against the README claims (--runslow)."""
import json
import os
import re

import pytest

from runners import demo
from runners.demo import SETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_fast_runs_every_method(tmp_path, capsys):
    assert demo.main(["--fast", "--out", str(tmp_path), "--sets", "brain", "phantom"]) == 0
    rows = json.load(open(tmp_path / "summary.json"))
    methods = {"zero-filled", "CG-SENSE", "L1-wavelet", "VP-SDE", "HFS-SDE", "HFS-SDE fast"}
    for name, accelerations in (("brain", {4, 8, 10}), ("phantom", {4, 8})):
        assert {r["method"] for r in rows if r["set"] == name} == methods
        assert {r["acc"] for r in rows if r["set"] == name} == accelerations
        assert (tmp_path / f"comparison_{name}_acc4.png").stat().st_size > 1000
    # The fast row is sample 0 of the HFS-SDE run, scored alone: a quarter of its evaluations and time.
    by_key = {(r["set"], r["method"], r["acc"]): r for r in rows}
    hfs, fast = by_key[("brain", "HFS-SDE", 8)], by_key[("brain", "HFS-SDE fast", 8)]
    assert hfs["num_samples"] == 4 and fast["nfe"] * 4 == hfs["nfe"]
    assert fast["psnr"] == hfs["sample_psnr"] and fast["folder"] == hfs["folder"]
    assert fast["seconds_per_slice"] == pytest.approx(hfs["seconds_per_slice"] / 4)
    assert "| 4× | HFS-SDE |" in capsys.readouterr().out
    # A folder of another setting (here: other slices) is one line, not a traceback.
    setting = tmp_path / "brain" / "acc4" / "zero_filled" / "setting.json"
    fields = json.loads(setting.read_text())
    fields["fields"]["slices"] = [["elsewhere", 3]]
    setting.write_text(json.dumps(fields))
    with pytest.raises(SystemExit, match=r"^demo: error: .*zero_filled holds reconstructions of another setting "
                                         r"\(differs in slices\)"):
        demo.main(["--fast", "--out", str(tmp_path)])


def test_calibrate_reconstructs_the_validation_slices_beside_not_into_the_test_folder(tmp_path, monkeypatch):
    """`--calibrate`: each diffusion method's validation run has its own folder (`acc<R>/validation/<method>`), so
    the test run that follows does not find its folder holding another setting."""
    calls = []

    def calibrate(config, out):
        calls.append(("validation", config.sampling.output_dir, config.sampling.calibration))
        return {"path": os.path.join(config.sampling.output_dir, "calibration.json")}

    def reconstruct(config, out):
        calls.append(("test", config.sampling.output_dir, config.sampling.calibration))
        return {}

    monkeypatch.setattr(demo, "calibrate", calibrate)
    monkeypatch.setattr(demo, "reconstruct", reconstruct)
    demo.run("brain", str(tmp_path), fast=True, slices=1, calibrated=True)
    validation = [c for c in calls if c[0] == "validation"]
    assert len(validation) == 2 * len(SETS["brain"][2])  # VP-SDE and HFS-SDE at each acceleration
    for _, folder, calibration in validation:
        acc_dir, name = os.path.split(folder)
        assert os.path.basename(acc_dir) == "validation"
        test = [c for c in calls if c[0] == "test" and c[1] == os.path.join(os.path.dirname(acc_dir), name)]
        assert len(test) == 1 and test[0][2] == os.path.join(folder, "calibration.json") and calibration == ""


def test_each_kind_of_demo_run_has_its_own_default_folder():
    kinds = [(False, 1, False), (True, 1, False), (False, 0, False), (False, 2, False), (False, 1, True),
             (False, 0, True)]
    folders = [demo.default_out(*kind) for kind in kinds]
    assert folders == ["results/demo", "results/demo_fast", "results/demo_all", "results/demo_2slices",
                       "results/demo_calibrated", "results/demo_all_calibrated"]


def psnr_tables(path: str, section_of) -> dict:
    """PSNR per (section, method, acc) of the 7-column demo tables in a Markdown file; `section_of(line, current)`
    gives the section that a line outside the tables opens (or `current`; None for text that is no demo table's)."""
    table, section = {}, None
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].endswith("×"):
            if section is not None:
                table[(section, cells[1], int(cells[0][:-1]))] = float(cells[3])
        else:
            section = section_of(line, section)
    return table


def documented_psnr() -> dict:
    """The results tables of demo/README.md, one per `### <Set>` section (the first test slice of each set)."""
    return psnr_tables(os.path.join(ROOT, "demo", "README.md"),
                       lambda line, current: line[4:].split()[0].lower() if line.startswith("### ") else current)


def readme_psnr() -> dict:
    """The demo tables of README.md: the Quick start output (sections `brain`, `phantom`: the first test slice) and
    the brain table of all four test slices (section `brain, all slices`)."""
    def section_of(line: str, current):
        opened = re.match(r"\s+(Brain|Phantom) demo \(full\)", line)
        if opened:
            return opened.group(1).lower()
        if line.startswith("## "):
            return "brain, all slices" if "brain demo" in line.lower() else None
        return current

    return psnr_tables(os.path.join(ROOT, "README.md"), section_of)


def assert_matches(rows: dict, documented: dict, where: str) -> None:
    assert set(documented) == set(rows), where
    for key, psnr in documented.items():
        assert abs(rows[key]["psnr"] - psnr) <= 0.3, (where, key, rows[key]["psnr"], psnr)


def summary(folder) -> dict:
    return {(r["set"], r["method"], r["acc"]): r for r in json.load(open(os.path.join(folder, "summary.json")))}


@pytest.mark.slow
def test_demo_matches_the_documented_tables(tmp_path):
    """`bash test_fastMRI.sh demo --sets brain phantom` (the default demo is its brain half) against demo/README.md
    and README.md's Quick start; then `--slices 0 --sets brain` (its own folders, as by default) against README.md's
    brain table."""
    demo.main(["--out", str(tmp_path), "--sets", "brain", "phantom"])
    rows = summary(tmp_path)
    assert rows[("phantom", "HFS-SDE", 4)]["psnr"] >= rows[("phantom", "zero-filled", 4)]["psnr"] + 3
    assert_matches(rows, documented_psnr(), "demo/README.md")
    readme = readme_psnr()
    assert_matches(rows, {k: v for k, v in readme.items() if k[0] in SETS}, "README.md, Quick start")
    demo.main(["--out", str(tmp_path / "all"), "--slices", "0", "--sets", "brain"])
    rows = {("brain, all slices",) + key[1:]: row for key, row in summary(tmp_path / "all").items()}
    assert_matches(rows, {k: v for k, v in readme.items() if k[0] == "brain, all slices"}, "README.md, brain table")
