"""A bundled config's phantom set is generated on first use, and an interrupted generation resumes."""
import logging
import os
import subprocess

from data_prepare import generate_smaps_phantom
from multicoil import folders
from runners import first_use


def test_the_phantom_set_is_generated_once_and_an_interrupted_generation_resumes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(folders, "_REPO", str(tmp_path))
    monkeypatch.setitem(folders.BUNDLED_SETS, "data/phantom", (folders._PHANTOM + " --train 2 --val 1 --coils 2 2",
                                                               True))
    runs = []

    def run_generator(args, **_):  # the generator's command, run in this process (a subprocess costs seconds)
        assert args[1] == os.path.abspath(generate_smaps_phantom.__file__)
        runs.append(args)
        return subprocess.CompletedProcess(args, generate_smaps_phantom.main(args[2:]))

    monkeypatch.setattr(subprocess, "run", run_generator)
    folder = tmp_path / "data" / "phantom"
    train, val = str(folder / "train"), str(folder / "val")
    caplog.set_level(logging.INFO)
    first_use.prepare_data([train, val], 16)
    assert caplog.text.count("does not exist: generating the phantom set on first use") == 1
    assert "--size 16 --train 2 --val 1" in caplog.text
    assert sorted(os.listdir(train)) == ["phantom_train_0000.h5", "phantom_train_0001.h5"]
    assert os.listdir(val) == ["phantom_val_0000.h5"] and not (folder / first_use.MARKER).exists()
    first_use.prepare_data([train, val], 16)
    assert len(runs) == 1
    # An interrupted generation leaves the marker and misses files: the next run completes the set.
    (folder / first_use.MARKER).touch()
    os.remove(os.path.join(train, "phantom_train_0001.h5"))
    first_use.prepare_data([train, val], 16)
    assert len(runs) == 2 and len(os.listdir(train)) == 2 and not (folder / first_use.MARKER).exists()
