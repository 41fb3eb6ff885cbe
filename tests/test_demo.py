"""The bundled demo: a fast smoke run (default tier) and the full run against the README claims (--runslow)."""
import json
import os

import pytest

from runners import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_fast_runs_every_method(tmp_path, capsys):
    assert demo.main(["--fast", "--out", str(tmp_path)]) == 0
    rows = json.load(open(tmp_path / "summary.json"))
    methods = {"zero-filled", "CG-SENSE", "L1-wavelet", "VP-SDE", "HFS-SDE", "HFS-SDE fast"}
    for name, accelerations in (("brain", {4, 8, 10}), ("phantom", {4, 8})):
        assert {r["method"] for r in rows if r["set"] == name} == methods
        assert {r["acc"] for r in rows if r["set"] == name} == accelerations
        assert (tmp_path / f"comparison_{name}_acc4.png").stat().st_size > 1000
    assert "| 4× | HFS-SDE |" in capsys.readouterr().out


def documented_psnr():
    """PSNR per (set, method, acc) from the results tables (one per `### <Set>` section) in demo/README.md."""
    table, section = {}, None
    for line in open(os.path.join(ROOT, "demo", "README.md")):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].endswith("×"):
            table[(section, cells[1], int(cells[0][:-1]))] = float(cells[3])
        elif line.startswith("### "):
            section = line[4:].split()[0].lower()
    return table


@pytest.mark.slow
def test_demo_matches_the_documented_table(tmp_path):
    demo.main(["--out", str(tmp_path)])
    rows = {(r["set"], r["method"], r["acc"]): r for r in json.load(open(tmp_path / "summary.json"))}
    assert rows[("phantom", "HFS-SDE", 4)]["psnr"] >= rows[("phantom", "zero-filled", 4)]["psnr"] + 3
    documented = documented_psnr()
    assert set(documented) == set(rows)
    for key, psnr in documented.items():
        assert abs(rows[key]["psnr"] - psnr) <= 0.3, key
