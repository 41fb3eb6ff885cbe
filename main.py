"""Entry point: train a score model or reconstruct undersampled k-space.

    python main.py --mode train  --config configs/hfssde/ddpm_continuous.py [--workdir results]
    python main.py --mode sample --config configs/hfssde/ddpm_continuous.py --config.sampling.folder=<run>
    python main.py --mode tune   --config configs/hfssde/brain_demo.py [--tune_metric ssim] [--tune_slices 2]
    python main.py --mode calibrate --config configs/hfssde/brain_demo.py [--tune_slices 2]

Any config key can be overridden on the command line: `--config.training.batch_size=4`.
This is the only module that reads absl flags; everything below takes `(config, workdir)`.
"""
import os
import re
import shlex
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training/sampling configuration file.", lock_config=True)
flags.DEFINE_enum("mode", None, ["train", "sample", "tune", "calibrate"], "Running mode: train, sample (reconstruct "
                  "the test set), tune (search the sampler settings on validation slices) or calibrate (fit the error "
                  "map's calibration on validation slices).")
flags.DEFINE_string("workdir", "results", "Folder of runs (train starts a new run in it) or one run folder "
                    "(train resumes it).")
flags.DEFINE_enum("tune_metric", "psnr", ["psnr", "ssim"], "tune: the score to maximise.")
flags.DEFINE_integer("tune_slices", 2, "tune and calibrate: how many validation slices (data.eval_root) score a "
                     "trial or fit the calibration.", lower_bound=1)
flags.mark_flags_as_required(["config", "mode"])

# Mistakes a user can fix: bad values, names and data (ValueError, with the project's DataError, CheckpointError,
# FolderError and FolderBusy) and paths that cannot be used (OSError). Out-of-memory errors get one line too;
# anything else, other RuntimeErrors included, keeps its traceback.
USER_ERRORS = (ValueError, OSError)
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory")
_BATCH_KEYS = {"train": "training.batch_size", "sample": "sampling.batch_size", "tune": "--tune_slices",
               "calibrate": "sampling.batch_size"}


def out_of_memory_hint(err: BaseException, mode: str, config) -> str | None:
    """One line for an out-of-memory error (torch.OutOfMemoryError or a RuntimeError saying so); None otherwise."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not any(s in text.lower() for s in _OUT_OF_MEMORY):
        return None
    key = _BATCH_KEYS[mode]
    now = {"train": config.training.batch_size, "sample": config.sampling.batch_size}.get(mode)
    if now is None:
        fix = f"fewer {key}"
    elif now == 0:
        fix = f"a fixed {key} below the automatic choice logged (e.g. --config.{key}=1)"
    elif now > 1:
        fix = f"a smaller {key} (now {now}, e.g. --config.{key}={now // 2})"
    else:
        fix = f"a device with more free memory ({key} is already 1)"
    return f"out of memory ({text.strip().splitlines()[0]}); try {fix}"


def user_message(err: BaseException) -> str:
    """The one-line message of a user error: an OSError of the system names its path and the problem."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"cannot use {err.filename}: {err.strerror}; check the path and its permissions"
    return str(err)


def config_argument(argv: list[str]) -> str | None:
    """The value of `--config` in `argv` (`--config=FILE` or `--config FILE`), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def config_file_line(err: BaseException, path: str) -> int | None:
    """The line of config file `path` where `err` was raised (a syntax error's line, or the deepest frame of the
    file in the traceback); None when the error did not come from the file."""
    if isinstance(err, SyntaxError) and err.filename and os.path.abspath(err.filename) == os.path.abspath(path):
        return err.lineno
    frames = [f for f in traceback.extract_tb(err.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
    return frames[-1].lineno if frames else None


def parse_flags(argv):
    """Parse flags; a bad flag, an unknown config key, or a missing or broken config file becomes one readable line
    instead of a traceback."""
    path = config_argument(argv)
    if path is not None and not os.path.isfile(path):
        sys.exit(f"main.py: config file {path} does not exist; give a file of configs/ (e.g. --config "
                 f"configs/hfssde/ddpm_continuous.py or configs/hfssde/brain_demo.py)")
    try:
        return FLAGS(argv)
    except flags.Error as err:
        text = str(err)
    except Exception as err:  # noqa: BLE001 - an error of the config file is named with its line; others re-raised
        line = config_file_line(err, path) if path else None
        if line is not None:
            message = err.msg if isinstance(err, SyntaxError) else f"{type(err).__name__}: {err}"
            sys.exit(f"main.py: config file {path}, line {line}: {message}; fix the file")
        if not isinstance(err, (AttributeError, KeyError)):
            raise
        leaf = re.search(r"'([^'\\]+)", str(err))
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        override = next((o for o in overrides if leaf and f".{leaf.group(1)}." in o + "."), "--config.*")
        hint = re.search(r'Did you mean "([^"]+)"', str(err))
        text = f"unknown config key in {override}" + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
    sys.exit(f"main.py: {text}\nRun `python main.py --helpfull` for the flags; config keys are listed in "
             f"configs/default_fastMRI_configs.py.")


def sample_command(override: str) -> str:
    """The `--mode sample` command of this run's config and overrides, plus `override`."""
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    return "python main.py --mode sample --config " + " ".join(map(shlex.quote, [
        config_flags.get_config_filename(FLAGS["config"])] + overrides + [override]))


def main(argv):
    del argv
    config = FLAGS.config
    try:
        if FLAGS.mode == "train":
            from runners.train import train
            train(config, FLAGS.workdir)
        elif FLAGS.mode == "tune":
            from runners.tune import tune
            best = tune(config, FLAGS.workdir, FLAGS.tune_metric, FLAGS.tune_slices)
            command = sample_command(f"--config.sampling.tuned={best['folder']}/best.json")
            print(f"best of {best['trials']} trials: {best['sampling']} (PSNR {best['psnr']:.2f} dB, SSIM "
                  f"{best['ssim']:.4f} on validation slices)\nreconstruct with them:\n  {command}")
        elif FLAGS.mode == "calibrate":
            from runners.calibrate import calibrate
            report = calibrate(config, FLAGS.workdir, FLAGS.tune_slices)
            if report is None:  # a torchrun rank other than 0
                return
            command = sample_command(f"--config.sampling.calibration={report['path']}")
            cal = report["calibration"]
            print(f"calibrated on {report['slices']} validation slices: scale {cal.scale:.4g}, MSE scale "
                  f"{cal.mse_scale:.4g}, baseline ratio {cal.baseline_ratio:.4g}, level ratio {cal.cv_ratio:.4g}\n"
                  f"reconstruct with it:\n  {command}")
        else:
            from runners.reconstruct import reconstruct
            reconstruct(config, FLAGS.workdir)
    except USER_ERRORS as err:
        if os.environ.get("HFS_TRACEBACK"):
            raise
        sys.exit(f"main.py: error: {user_message(err)}\n(set HFS_TRACEBACK=1 to see the traceback)")
    except RuntimeError as err:
        hint = out_of_memory_hint(err, FLAGS.mode, config)
        if hint is None or os.environ.get("HFS_TRACEBACK"):
            raise
        sys.exit(f"main.py: error: {hint}\n(set HFS_TRACEBACK=1 to see the traceback)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
