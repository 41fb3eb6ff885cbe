"""The README's commands on a fresh copy of the tree, and its test counts (slow tier: `--runslow`).

The demo tables are checked against a fresh run in tests/test_demo.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The training commands at a tiny size: 32×32 images, a 2-level network, two steps.
TINY_TRAINING = ["--config.data.image_size=32", "--config.model.nf=32", "--config.model.ch_mult=(1,2)",
                 "--config.model.num_res_blocks=1", "--config.training.n_iters=2", "--config.training.batch_size=2",
                 "--config.device=cpu"]
TINY_TUNE = ["--tune_slices=1", "--config.sampling.N=2", "--config.sampling.num_samples=1", "--config.device=cpu"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> str:
    """The files a `git clone` of this tree would hold (tracked and new files, none that git ignores)."""
    out = str(tmp_path_factory.mktemp("clone") / "hfs-sde")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(out, name))
    return out


def run(command: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


def test_training_generates_the_phantom_set_on_first_use_for_every_sde(fresh_copy):
    for index, method in enumerate(("hfssde", "vp", "ve")):
        result = run(["bash", "train_fastMRI.sh", method] + TINY_TRAINING, fresh_copy)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("generating the phantom set on first use" in result.stderr) == (index == 0), result.stderr[-3000:]
        assert "training finished at step 2" in result.stderr
    assert len(os.listdir(os.path.join(fresh_copy, "data", "phantom", "train"))) == 200
    assert "suggested max number of worker" not in result.stderr


def test_tuning_the_brain_demo_runs_reruns_and_prints_the_command(fresh_copy):
    command = [sys.executable, "main.py", "--mode", "tune", "--config", "configs/hfssde/brain_demo.py"] + TINY_TUNE
    first = run(command, fresh_copy)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"tune: \d+ trials planned .* about \d+ min in all", first.stderr)
    assert "--config.sampling.tuned=" in first.stdout
    again = run(command, fresh_copy)
    assert again.returncode == 0 and "reusing the" in again.stderr and "trials planned" not in again.stderr


@pytest.mark.parametrize("command, next_command", [
    ("bash train_fastMRI.sh hfssde brain_demo", "pip download nilearn --no-deps -d /tmp/wheels && python "
                                                "data_prepare/generate_brain_demo.py --source /tmp/wheels"),
    ("bash test_fastMRI.sh hfssde", "Train one with `bash train_fastMRI.sh hfssde`"),
    ("python data_prepare/generate_brain_demo.py --source /tmp/wheels --out data/brain_demo",
     "`pip download nilearn --no-deps -d /tmp/wheels`"),
])
def test_commands_that_need_data_or_weights_print_the_next_command(fresh_copy, command, next_command, tmp_path):
    words = [sys.executable if w == "python" else w for w in command.split()]
    words = [str(tmp_path / "no_wheels") if w == "/tmp/wheels" else w for w in words]  # whatever /tmp holds
    result = run(words, fresh_copy)
    message = [line for line in result.stderr.splitlines() if "error" in line or line.startswith("train:")]
    assert result.returncode != 0 and len(message) == 1, result.stderr[-3000:]
    assert next_command in message[0], message


def collected(*args: str) -> int:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests",
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=600).stdout
    return int(re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", out).group(1))


def test_the_test_counts_in_the_readme_add_up():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    claims = [tuple(map(int, m)) for m in re.findall(r"`(\d+) passed, (\d+) skipped`", text)]
    assert len(claims) == 2, claims  # without BART, with BART
    total, slow = collected(), collected("-m", "slow")
    (passed, skipped), (passed_bart, skipped_bart) = claims
    assert passed + skipped == passed_bart + skipped_bart == total
    assert skipped_bart == slow and skipped > slow
