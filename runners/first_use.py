"""Data made on first use: a bundled config's phantom set is generated when its folders are absent.

`datasets.BUNDLED_SETS` names the data set of each bundled config and the command that writes it. The phantom sets
need no download, so `prepare_data` runs that command (seeded; its progress bar on the terminal) the first time
training or tuning needs the set; the brain demo's set needs a download, and a missing folder of it (or of any other
set) is reported by the loader with the command that makes it. A marker file `.generating` in the set's folder,
removed when the generator has finished, makes an interrupted generation resume on the next run instead of
training on a partial set.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys

import datasets

MARKER = ".generating"


def _runs_from_repository(command: str) -> list[str]:
    """The argument list of a `python data_prepare/...` command, with this interpreter and the script's full path."""
    words = shlex.split(command)
    return [sys.executable, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), words[1])] + \
        words[2:]


def prepare_data(folders: list[str], image_size: int) -> None:
    """Generate the phantom set holding each of `folders` (e.g. `data.root`, `data.eval_root`) when the folder is
    absent or its generation was interrupted; one log line names the command. Other sets are left to the loader."""
    for folder in folders:
        known = datasets.data_command(folder, image_size)
        set_folder = os.path.dirname(os.path.normpath(folder))
        marker = os.path.join(set_folder, MARKER)
        if known is None or not known[1] or (os.path.isdir(folder) and not os.path.exists(marker)):
            continue
        command = known[0]
        state = "was left incomplete" if os.path.isdir(folder) else "does not exist"
        logging.info("%s %s: generating the phantom set on first use (seeded; an interrupted run resumes) with `%s`",
                     folder, state, command)
        os.makedirs(set_folder, exist_ok=True)
        open(marker, "w").close()
        result = subprocess.run(_runs_from_repository(command), stdout=subprocess.DEVNULL)
        if result.returncode != 0:
            raise OSError(f"the phantom generator stopped (exit status {result.returncode}); run `{command}` to see "
                          f"why, or rerun this command to resume")
        os.remove(marker)
