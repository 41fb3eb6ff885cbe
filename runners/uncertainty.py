"""Error maps of a reconstruction, their calibration on validation slices, the predicted PSNR and the warnings.
`main.py --mode sample` writes them (runners/reconstruct.py); `main.py --mode calibrate` fits the calibration
(runners/calibrate.py).

Error map. A reconstruction `x̄` (the mean of K posterior samples, or one image) misses the truth by two parts that
the map adds as independent variances, per pixel of the magnitude image:

    var = G_w * ((1 + 1/K)·s²) + G_w * var_noise,     error_std = k·√var

- `s²` the variance of the K samples' magnitudes (unbiased; none for K = 1): the prior's uncertainty given the
  data. The truth is one more draw from the posterior the samples come from, and the mean of K draws adds s²/K.
- `var_noise` the measurement noise that the data consistency carries into the image, identical in every sample,
  so the spread cannot see it: `sampling.noise_replicas` pseudo-replicas (utils/noise.replica_variance) of complex
  white noise at the level σ̂ the data reveal (utils/noise.noise_sigma), through the method's last
  data-consistency operations with the network's estimate held fixed (sampling.data_response; for a linear
  baseline, zero-filled or CG-SENSE, the method itself). No network evaluations.
- `G_w *` a Gaussian window of `sampling.error_smoothing` = w pixels (0: none): K samples and a few replicas give
  each pixel's variance from a handful of draws; pooling neighbours trades resolution for a steadier estimate (on
  three fastMRI-like slices at 8×, 4 samples, 8 replicas: rank correlation with |error| 0.15 at w = 0, 0.21 at
  w = 1, 0.22 at w = 2).
- `k` the calibration scale (1 until calibrated).

Level by k-space cross-validation (`sampling.cross_validate`). The samples share most of their error: it lies on the
k-space lines that were not measured, where the prior fills in the same way in every sample, so the spread says
too little about its size when the prior fits the image worse than on the validation slices (another contrast).
The measured lines can tell: the method runs once more (one sample, its own noise seeds) with every n-th measured
line outside the fully sampled centre held out (`sampling.cv_every` = n, 4 by default; utils/masks.holdout_split),
once per fold (`sampling.cv_folds` = F, 2 by default: F disjoint sets of held-out lines, spread evenly), and

    cv_error = Σ_f ‖H_f (A x_f − y)‖² / Σ_f |H_f|

(H_f the held-out samples of fold f in every coil, x_f that fold's reconstruction) is how well it predicts data it
did not see — the measurement noise included. One fold judges the slice on a quarter of its outer lines, and which
quarter matters on a slice where the method and the baseline are close; a second fold lowers that chance (on the
mismatch set of bench/README.md, false warnings 4 of 31 with one fold, 3 of 31 with two). `sampling.cv_level`
then sets the map's mean per slice, keeping the spread's shape `var`, before the calibration below:

    'geomean' (default) √(mean(var)·ρ·cv_error)     the geometric mean of the two levels, ρ = 1 until calibrated
    'max'              max(mean(var), ρ·cv_error)    the larger of the two
    'cv'               cv_error
    'spread'           mean(var)                     the samples' spread with the propagated noise

(a flat map where there is no `var`: one sample, no replicas; 'geomean' and 'max' then use cv_error; 'geomean' the
one that is positive when the other is 0). Each level fails in its own way: the spread promises too little error
where every sample fills in alike (T2-weighted slices, a prior that does not fit the image), cv_error too little
where the held-out lines are missed by less than the image (on the mismatch set at 4×) and too much on some unseen
heads. cv_error judges the method on a fraction of the lines and at a somewhat higher acceleration
than it runs: the held-out reconstruction sees (n − 1)/n of the outer lines, n/(n − 1) times as far apart on average
(with n = 2, twice the acceleration: more false warnings and a level too high at 4×; a larger n holds out fewer
lines and makes the score noisier). The calibration puts the two levels on one scale, `ρ = exp(mean over the
validation slices of log(mean(var) / cv_error))` (no ground truth needed). 'geomean' averages their logarithms: on
two of the three unseen heads of bench/README.md, with the fine-detail factor below, the two bracket the truth (each
alone predicts Colin27's PSNR 0.6 dB too high and 0.5 dB too low, a real head's 1.6 dB too high and 1.3 dB too low;
the macaque's 0.4 and 0.6 dB too low), and the mean cancels what 'max' (the error is at least what either says; the
default until 2026-12-01) keeps as pessimism. Its price is optimism where both levels promise too little: on images
unlike a brain the predicted PSNR is within 1.5 dB on 37 of their 51 slices against 42 with 'max' (too high by up to
3.8 dB at 4×), and at 4× on brains it is 0.9 dB too high on average (0.5 with 'max'). The calibration's `c` is then
the ratio of the MSE to that level on the validation slices. It costs F samples per slice and changes the map's
level (coverage, predicted PSNR), not the rank correlation; the cross-validation's `cv_error` and `cv_margin` do not
depend on `cv_level`. With a baseline (`sampling.warn_baseline`, below) the baseline is cross-validated on the same
folds, and

    cv_margin = 10 log10(cv_error_baseline / e_K),   e_K = σ̂² + (cv_error − σ̂²)·(1 + 1/K)/2

is how many dB better the method predicts the measurements it did not see: a direct comparison of the two on the
slice's own data, which needs no calibration (the warning, below, averages it with `pred_margin`). `e_K` turns the
error of the one cross-validation sample into that of the mean of K that the method returns: beyond the noise σ̂²
on the held-out lines (which no image predicts), a posterior draw misses by twice the posterior variance and the
mean of K by (1 + 1/K) times it — the map's own assumption; for one sample or a baseline e_K = cv_error. On slices
unlike the validation ones the prediction of `pred_margin` (below) can be far off (retina vessels at 8×: predicted
+0.7 dB, true −2.9 dB; cv_margin −5.9 dB). cv_margin has its own blind spot: on a skull-stripped macaque brain at
10× it reads level (−0.24 … +0.47 dB) on five slices whose image is 2.7–5.0 dB better than the baseline's (their
mean with `pred_margin`, +1.0 … +1.8 dB, is not), and holding out fewer lines does not help (bench/README.md).

Calibration (`fit`, on the validation slices reconstructed by `--mode calibrate`; with 'geomean' or 'max' first ρ,
above, and the maps set to its level), over the object's pixels (`object_support` of the truth) for `k` and over
whole images for the MSE:

    k = q / z₀.₉₅,   q = conformal_quantile(|e_i| / √var_i, 0.95)   (e = |x̄| − |truth|, z₀.₉₅ = 1.96)
    c = exp(mean over slices of log(MSE / mean(error_std²)))

so that ±1.96·error_std holds 95 % of the validation pixels (±z(p)·error_std nominally p, `COVERAGE_LEVELS` and
the reliability diagram show how far that holds at other levels), and

    predicted MSE = c·mean(error_std²),   predicted PSNR = 10 log10(max|x̄|² / predicted MSE)

with the reconstruction's peak in place of the truth's.

Fine detail (`sampling.detail_power` = p, 0.3 by default; 0: off). k and c are fitted on the validation slices'
anatomy; an image with more of its energy at fine scales has more to miss on the lines that were not measured than
its held-out lines and its spread show, one with less has less (calibrated on template slices, the PSNR predicted
for a real head was 2.4–3.0 dB too high on one row, for a smooth skull-stripped macaque brain up to 4.6 dB too low,
every slice of a head the same way; bench/README.md). Once calibrated, each slice's map variance is multiplied by

    (d / d_ref)^p,   d = Σ_{|k| > min(H, W)/8} |F|x̄|(k)|² / Σ_k |F|x̄|(k)|²

d the fine-detail fraction of the reconstruction (the share of its magnitude's 2-D DFT energy beyond an eighth of
the image size, radially in DFT bins; no ground truth), d_ref the geometric mean of d over the validation slices; the
validation maps get the same factor before k and c are fitted. The level rule and p were chosen together on the
benchmark's sets (bench/README.md, recomputed from the runs' files, each run calibrated on its row's validation
slices; 'geomean', 'max' and 'cv' with p = 0 … 0.5): with one set of the six left out at a time, the other five choose
'geomean' with p = 0.3 (0.25 when the real head is left out), and the left-out sets then have ±1.96σ coverage within
0.90–0.97 on 52 of 52 runs and the predicted PSNR within 1.5 dB on 190 of 201 brain slices and 37 of 51 images unlike
a brain ('max' with p = 0: 39 runs, 166 and 41 slices; 'max' with p = 0.2: 47, 172 and 42); the warnings stay as
they were (14 of the 15 losing slices, none of the 229 ≥ 1 dB ahead).

With a classical baseline `x_b` (`sampling.warn_baseline`,
run on the same data with the config's settings), its MSE is predicted without ground truth from the distance
`D = mean((|x_b| − |x̄|)²)`: for a posterior mean, `E‖x_b − x‖² = ‖x_b − x̄‖² + E‖x̄ − x‖²`, so

    baseline MSE ≈ r·(D + P),   r = exp(mean over slices of log(MSE_b / (D + P)))   (P the predicted MSE)

(r < 1 absorbs the part of their errors that the two methods share) and `pred_margin = 10 log10(r(D + P) / P)` is
the predicted PSNR gain over the baseline. The two estimates fail in different places — `pred_margin` where the
calibration does not transfer (images unlike the validation slices: retina vessels +1.8 dB predicted, −8.2 dB true),
`cv_margin` by a bias that follows the acceleration (on average +2.3 dB too high at 8×, −1.7 dB too low at 10×
over the test slices of bench/README.md, where `pred_margin` is off by −0.4 and −0.3 dB) — and their errors are
uncorrelated (r = −0.01 over 228 test slices of five sets), so `margin`, the estimate the warning judges, is their
mean:

    margin = (cv_margin + pred_margin) / 2     (either alone where only one exists; pred_margin once calibrated)

(error against the true margin, rms over those slices: cv_margin 3.0 dB, pred_margin 1.3, the mean 1.6; on the
images unlike a brain, where the warning matters, 2.4, 2.4 and 1.6). `calibration.json` keeps k, c, r, ρ and the
identity fields that shape the map (runners/identity.py without the data files, slices, test set and seed): applied
to another setting, it is refused, naming the fields that differ. It also keeps d_ref (`detail`; 0 in a file of an
older version: no detail adjustment).

Per-slice columns of `metrics.csv` (`FIELDS`, each where it applies): `sigma` (σ̂), `misfit` (`‖A x̄ − y‖ /
(σ̂ √m)`, the data misfit in units of the noise, m measured samples: about 1 or below when the reconstruction
explains its data down to the noise), `cv_error`, `spread_level` (mean(var) beside it, uncalibrated), `detail` (d
above, where there is a map), `pred_psnr`,
`spread_ratio` (rms of s over rms of √var_noise on the reconstruction's support), `pred_margin`, `cv_margin`, `margin`
(the warning's estimate, above), `baseline_psnr` (ground truth), `coverage_50/68/90/95` and `error_rank_corr` (the
map against |e| on the object, ground truth; `error_rank_ceiling` what the map would reach if it were exact,
utils/metrics.rank_ceiling), and `warn`: 1 when the reconstruction is predicted to be no better than it should be —

    misfit > warn_misfit        the prior cannot explain the measurements down to the noise level;
    spread_ratio < warn_spread  the samples agree far more closely than the noise in the data allows;
    margin < warn_margin        not clearly better than the baseline (`margin` above: the held-out lines'
                                comparison and the calibrated prediction, averaged).

`warn_margin` (dB, 0.5 by default) sits inside the band where a warning is neither wrong nor needed: a method that
loses to the baseline should be warned, one that beats it by 1 dB or more should not. `warn_misfit` or
`warn_spread` = 0 switches its test off, an empty `warn_baseline` the baseline test. The run is warned (`warning` in
summary.json) when at least half of its slices are.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.io
import torch
from scipy.ndimage import gaussian_filter

import sampling
from runners import build
from runners.identity import Identity, differences, flat, jsonable
from utils import metrics
from utils.atomic import write_json
from utils.common import check_setting, derived_seed, finite_at_least, whole_between
from utils.masks import holdout_split
from utils.mri import sense_forward
from utils.noise import noise_sigma, replica_variance

CALIBRATION_LEVEL = 0.95
RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95, 0.99)
FIELDS = ("sigma", "misfit", "cv_error", "spread_level", "detail", "pred_psnr", "spread_ratio", "pred_margin",
          "cv_margin", "margin", "baseline_psnr", *(f"coverage_{round(100 * p)}" for p in metrics.COVERAGE_LEVELS),
          "error_rank_corr", "error_rank_ceiling", "warn")
NOISE_STREAM = 17  # noise seeds of the pseudo-replicas: derived from the slice's seed and this number
CV_STREAM = 23  # noise seeds of the cross-validation sample, likewise
CV_LEVELS = ("geomean", "max", "cv", "spread")  # the map's level with cross-validation (module docstring)
ON_ONE_SCALE = ("geomean", "max")  # the levels that combine the two, put on one scale by the calibration's ρ
LINEAR_BASELINES = ("zero_filled", "sense")  # baselines linear in the data: their noise response is themselves


@dataclass(frozen=True)
class Calibration:
    """The fitted numbers (module docstring): the map's scale `k`, the MSE scale `c`, the baseline's ratio `r`,
    `cv_ratio` ρ, the spread's level over cv_error on the validation slices (for `ON_ONE_SCALE`), and `detail`
    d_ref, their fine-detail fraction (0: none, the map is not adjusted for detail; files of older versions)."""

    scale: float = 1.0
    mse_scale: float = 1.0
    baseline_ratio: float = 1.0
    cv_ratio: float = 1.0
    detail: float = 0.0


@dataclass(frozen=True)
class Options:
    """The `sampling.*` keys of the error map and the warnings; `calibration` the path of a calibration file."""

    noise_replicas: int
    error_smoothing: float
    warn_misfit: float
    warn_spread: float
    warn_baseline: str
    calibration: str
    cross_validate: bool = False
    warn_margin: float = 0.5
    cv_level: str = "geomean"
    cv_every: int = 4
    cv_folds: int = 2
    detail_power: float = 0.3

    def __post_init__(self):
        check_setting("sampling.cross_validate", self.cross_validate, isinstance(self.cross_validate, bool),
                      "True or False")
        check_setting("sampling.cv_level", self.cv_level, self.cv_level in CV_LEVELS,
                      f"one of {list(CV_LEVELS)} (the map's level with cross-validation: True was 'cv', False "
                      f"'spread')")
        check_setting("sampling.cv_every", self.cv_every, whole_between(self.cv_every, 2),
                      "a whole number ≥ 2 (every n-th measured line outside the centre is held out)")
        check_setting("sampling.cv_folds", self.cv_folds, whole_between(self.cv_folds, 1, self.cv_every),
                      f"a whole number from 1 to sampling.cv_every={self.cv_every} (disjoint held-out folds)")
        check_setting("sampling.warn_margin", self.warn_margin, math.isfinite(self.warn_margin), "a finite number (dB)")
        check_setting("sampling.noise_replicas", self.noise_replicas, whole_between(self.noise_replicas, 0),
                      "a whole number ≥ 0")
        for key in ("error_smoothing", "warn_misfit", "warn_spread", "detail_power"):
            value = getattr(self, key)
            check_setting(f"sampling.{key}", value, finite_at_least(value, 0), "a finite number ≥ 0 (0: off)")
        if self.warn_baseline:
            names = [n for n in build.METHODS.names() if not build.is_diffusion(n)]
            check_setting("sampling.warn_baseline", self.warn_baseline, self.warn_baseline in names,
                          f"one of the classical baselines {names}, or '' (off)")


def options(config) -> Options:
    """The `Options` of `config.sampling`, validated."""
    s = config.sampling
    return Options(int(s.noise_replicas), float(s.error_smoothing), float(s.warn_misfit), float(s.warn_spread),
                   str(s.warn_baseline), str(s.calibration), s.cross_validate, float(s.warn_margin), s.cv_level,
                   s.cv_every, s.cv_folds, float(s.detail_power))


# The config's defaults (configs/default_fastMRI_configs.py) of the options that shape a result.
DEFAULTS = {"noise_replicas": 0, "error_smoothing": 2.0, "warn_misfit": 0.0, "warn_spread": 0.0, "warn_baseline": "",
            "cross_validate": False, "warn_margin": 0.5, "cv_level": "geomean", "cv_every": 4, "cv_folds": 2,
            "detail_power": 0.3}


def option_values(opts: Options) -> dict:
    """The options that shape a result: every field of `opts` but the calibration file."""
    return {k: v for k, v in asdict(opts).items() if k != "calibration"}


def identity_fields(opts: Options, baseline_settings) -> dict | None:
    """The identity fields of the error-map options (None when every option has its default, so results made before
    the options existed keep their identity; defaults that have changed, `cv_level` and `detail_power`, act only with
    cross-validation, which is recorded, or a calibration, whose key keeps every option); the calibration's numbers
    are added by `with_calibration`."""
    values = option_values(opts)
    if values == DEFAULTS:
        return None
    if opts.warn_baseline:
        values["baseline_settings"] = jsonable(baseline_settings)
    return values


# Identity fields that do not shape a calibration: where the slices come from, which slices, and the noise seed.
_UNSHAPING = ("slices", "datashift", "seed", "save_samples", "data.files", "uncertainty.warn_misfit",
              "uncertainty.warn_spread", "uncertainty.warn_margin", "uncertainty.calibration")


def calibration_key(fields: dict, opts: Options) -> dict:
    """The identity `fields` that shape an error map's calibration (module docstring), flattened, with every option
    of `opts` (`option_values`) also where the identity leaves them out at their defaults: a calibration fitted
    under another default is refused."""
    fields = {**fields, "uncertainty": {**option_values(opts), **fields.get("uncertainty", {})}}
    return {k: v for k, v in flat(fields).items() if not any(k == u or k.startswith(u + ".") for u in _UNSHAPING)}


def load_calibration(path: str, identity: Identity, opts: Options) -> Calibration | None:
    """The calibration in file `path` (`sampling.calibration`; None when empty), checked against the result's
    `identity` and error-map options `opts`."""
    if not path:
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
        calibration = Calibration(**saved["calibration"])
        key = saved["key"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"sampling.calibration={path}: not a readable calibration.json of `main.py --mode "
                         f"calibrate` ({err})") from err
    damaged = [f"{k}={v!r}" for k, v in asdict(calibration).items()
               if not (finite_at_least(v, 0) and (v > 0 or k == "detail"))]
    if damaged:
        raise ValueError(f"sampling.calibration={path} holds numbers no calibration can have ({', '.join(damaged)}: "
                         f"each must be a finite number > 0, detail ≥ 0); fit it again with `python main.py --mode "
                         f"calibrate`")
    changed = differences(key, calibration_key(identity.fields, opts))
    if changed:
        raise ValueError(f"sampling.calibration={path} was fitted for another setting (differs in "
                         f"{', '.join(changed[:6])}{' …' if len(changed) > 6 else ''}); fit one for this setting "
                         f"with `python main.py --mode calibrate` and the same config and overrides")
    return calibration


def with_calibration(identity: Identity, calibration: Calibration | None) -> Identity:
    """`identity` with the calibration's numbers among its fields (they shape the map and the warnings)."""
    if calibration is None:
        return identity
    fields = dict(identity.fields)
    fields["uncertainty"] = {**fields.get("uncertainty", {}), "calibration": asdict(calibration)}
    return Identity(identity.prefix, fields)


def write_calibration(path: str, calibration: Calibration, identity: dict, opts: Options, report: dict) -> None:
    """`calibration.json`: the fitted numbers, the calibration key of the validation run's `identity` (the
    `{"identity", "fields"}` of its setting.json) and options `opts`, and the `report`."""
    write_json(path, {"calibration": asdict(calibration), "key": calibration_key(identity["fields"], opts),
                      "fitted_on": identity["identity"], **report})


# --- per batch (torch) ---------------------------------------------------------------------------------------------

def batch_maps(reconstructor, samples: torch.Tensor, y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor,
               seeds) -> dict:
    """The ground-truth-free quantities of a batch: `sigma` σ̂ and `misfit` `[B]`; `var_noise` `[B, H, W]` (with
    `noise_replicas` and a method that has a noise response), `baseline` complex `[B, H, W]` (with
    `warn_baseline`); numpy arrays. `samples` complex `[B, K, H, W]`, `y` and `csm` `[B, C, H, W]`."""
    opts = reconstructor.uncertainty
    sigma = noise_sigma(y, csm, mask)
    measured = float(torch.broadcast_to(mask, y.shape)[0].gt(0).sum())
    misfit = torch.linalg.vector_norm(sense_forward(samples.mean(dim=1, keepdim=True), csm, mask) - y * mask,
                                      dim=(1, 2, 3))
    out = {"sigma": sigma.cpu().numpy(),
           "misfit": torch.where(sigma > 0, misfit / (sigma.clamp_min(1e-30) * measured ** 0.5), torch.nan)
           .cpu().numpy()}
    response = reconstructor.noise_response(csm, mask, sigma)
    if opts.noise_replicas and response is not None:
        normal = sampling.SampleNoise([derived_seed(int(s) % 2**63, NOISE_STREAM) for s in seeds], y.device)
        out["var_noise"] = replica_variance(response, y.shape, sigma, mask, opts.noise_replicas,
                                            normal)[:, 0].cpu().numpy()
    if reconstructor.baseline is not None:
        entry, settings = reconstructor.baseline
        out["baseline"] = entry.item(y, csm, mask, settings)[:, 0].cpu().numpy()
    if opts.cross_validate:
        out.update(cross_validation(reconstructor, y, csm, mask, seeds))
    return out


def cross_validation(reconstructor, y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor, seeds) -> dict:
    """`cv_error` `[B]` and, with a baseline, `cv_baseline` (module docstring): the squared misses on the held-out
    samples of every fold (utils/masks.holdout_split), pooled over the folds, per held-out sample."""
    opts = reconstructor.uncertainty
    squared, count = {}, 0.0
    for fold in range(opts.cv_folds):
        kept, held = holdout_split(mask, opts.cv_every, fold, opts.cv_folds)
        count += float(torch.broadcast_to(held, y.shape)[0].gt(0).sum())
        stream = (CV_STREAM,) if fold == 0 else (CV_STREAM, fold)
        refit, _ = reconstructor(y * kept, csm, kept, [derived_seed(int(s) % 2**63, *stream) for s in seeds],
                                 num_samples=1)
        images = {"cv_error": refit[:, :1]}
        if reconstructor.baseline is not None:
            entry, settings = reconstructor.baseline
            images["cv_baseline"] = entry.item(y * kept, csm, kept, settings)
        for key, image in images.items():
            missed = (sense_forward(image, csm, held) - y * held).abs().square().sum(dim=(1, 2, 3))
            squared[key] = squared.get(key, 0.0) + missed
    return {key: (total / count).cpu().numpy() for key, total in squared.items()}


# --- per slice (numpy) ---------------------------------------------------------------------------------------------

def error_variance(std: np.ndarray | None, var_noise: np.ndarray | None, num_samples: int,
                   smoothing: float) -> np.ndarray | None:
    """`G_w * ((1 + 1/K)·s²) + G_w * var_noise` (module docstring) from the samples' std `s` and the noise variance,
    each `[H, W]` or None, with a Gaussian window of `smoothing` pixels; None when both are None."""
    parts = [(1 + 1 / num_samples) * std.astype(np.float64) ** 2 if std is not None else None, var_noise]
    parts = [gaussian_filter(p.astype(np.float64), smoothing) if smoothing else p.astype(np.float64)
             for p in parts if p is not None]
    return sum(parts) if parts else None


def cv_map_level(spread_level: float | None, cv_error: float, cv_level: str, cv_ratio: float) -> float:
    """The map's mean with cross-validation (module docstring): `√(spread_level·cv_ratio·cv_error)` for 'geomean' (the
    one of them that is positive when the other is 0), `max(spread_level, cv_ratio·cv_error)` for 'max', `cv_error`
    for 'cv' or without a spread (`spread_level` None)."""
    if cv_level == "max" and spread_level is not None:
        return max(spread_level, cv_ratio * cv_error)
    if cv_level == "geomean" and spread_level is not None:
        positive = [level for level in (spread_level, cv_ratio * cv_error) if level > 0 or math.isnan(level)]
        return math.exp(float(np.mean(np.log(positive)))) if positive else 0.0
    return cv_error


def to_level(var: np.ndarray | None, level: float, shape) -> np.ndarray:
    """`var` rescaled so that its mean is `level` (the cross-validation error); a flat map of `level` when there is
    no `var` or it is zero everywhere."""
    mean = 0.0 if var is None else float(np.mean(var))
    return var * (level / mean) if mean > 0 else np.full(shape, level, np.float64)


def fine_detail(image: np.ndarray) -> float:
    """The fine-detail fraction (module docstring) of a magnitude image `[H, W]`: the share of the energy of its 2-D
    DFT at radial frequencies above min(H, W)/8 (DFT bins); 0 for an image without energy."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(image.astype(np.float64)))) ** 2
    rows, cols = np.meshgrid(np.arange(image.shape[0]) - image.shape[0] // 2,
                             np.arange(image.shape[1]) - image.shape[1] // 2, indexing="ij")
    total = float(power.sum())
    return float(power[np.hypot(rows, cols) > min(image.shape) / 8].sum()) / total if total > 0 else 0.0


def detail_factor(detail: float, reference: float, power: float) -> float:
    """`(detail / reference)^power`, the factor on a slice's map variance (module docstring); 1 without a reference
    (`reference` 0: uncalibrated, or a calibration of an older version), with `power` 0, or for an empty image."""
    return (detail / reference) ** power if reference > 0 and power and detail > 0 else 1.0


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def slice_columns(recon: np.ndarray, truth: np.ndarray, region_fn, std: np.ndarray | None, maps: dict, j: int,
                  num_samples: int, opts: Options, calibration: Calibration | None) -> tuple[dict, np.ndarray | None]:
    """The columns of slice `j` of a batch's `batch_maps` (module docstring) and its error map `error_std`
    `[H, W]` (None without one). `recon` and `truth` are magnitudes `[H, W]`, `region_fn` gives an image's object
    support (the truth's for the columns that need it, the reconstruction's for the others), `std` the samples'
    std."""
    cal = calibration or Calibration()
    row = {"sigma": float(maps["sigma"][j]), "misfit": float(maps["misfit"][j])}
    var_noise = maps["var_noise"][j] if "var_noise" in maps else None
    var = error_variance(std, var_noise, num_samples, opts.error_smoothing)
    if "cv_error" in maps:
        row["cv_error"] = float(maps["cv_error"][j])
        if var is not None:
            row["spread_level"] = float(np.mean(var))
        if opts.cv_level != "spread":
            level = cv_map_level(row.get("spread_level"), row["cv_error"], opts.cv_level, cal.cv_ratio)
            var = to_level(var, level, recon.shape)
    if var is not None:
        row["detail"] = fine_detail(recon)
        var = var * detail_factor(row["detail"], cal.detail, opts.detail_power)
    error_std = None if var is None else cal.scale * np.sqrt(var)
    if error_std is not None:
        predicted = cal.mse_scale * error_std ** 2
        row["pred_psnr"] = metrics.predicted_psnr(float(recon.max()), predicted)
        row.update(metrics.error_calibration(truth, recon, error_std, region_fn(truth)))
        if std is not None and var_noise is not None:
            support = region_fn(recon)
            noise = float(np.mean(var_noise[support])) if support.any() else 0.0
            row["spread_ratio"] = math.sqrt(float(np.mean(std[support] ** 2)) / noise) if noise > 0 else math.nan
        if "baseline" in maps:
            baseline = np.abs(maps["baseline"][j])
            mse = float(np.mean(predicted))
            row["pred_margin"] = 10 * math.log10(cal.baseline_ratio * (_mse(baseline, recon) + mse) / mse) \
                if mse > 0 else math.nan
    if "cv_baseline" in maps:
        floor = min(row["sigma"] ** 2, row["cv_error"])  # the noise on the held-out lines, which no image predicts
        mean_error = floor + (row["cv_error"] - floor) * (1 + 1 / num_samples) / 2
        ratio = float(maps["cv_baseline"][j]) / mean_error if mean_error > 0 else math.nan
        row["cv_margin"] = 10 * math.log10(ratio) if ratio > 0 else math.nan
    estimates = margin_estimates(row, calibration is not None)
    if estimates:
        row["margin"] = float(np.mean(list(estimates.values())))
    if "baseline" in maps:
        row["baseline_psnr"] = metrics.psnr(truth, np.abs(maps["baseline"][j]))
    row["warn"] = int(bool(warnings(row, opts, calibration is not None)))
    return row, error_std


def margin_estimates(row: dict, calibrated: bool) -> dict:
    """The finite estimates of a slice's PSNR gain over the baseline that `margin` averages (module docstring):
    `cv_margin`, and `pred_margin` once calibrated."""
    return {key: row[key] for key in ("cv_margin", "pred_margin")
            if key in row and math.isfinite(row[key]) and (calibrated or key == "cv_margin")}


def warnings(row: dict, opts: Options, calibrated: bool) -> list[str]:
    """The reasons (module docstring) for which a slice's row is warned; empty when none holds."""
    reasons = []
    if opts.warn_misfit and row["misfit"] > opts.warn_misfit:
        reasons.append(f"its data misfit is {row['misfit']:.2f}× the noise level (> sampling.warn_misfit="
                       f"{opts.warn_misfit:g}): the prior does not explain the measurements")
    if opts.warn_spread and row.get("spread_ratio", math.inf) < opts.warn_spread:
        reasons.append(f"its samples spread {row['spread_ratio']:.2f}× the propagated noise (< sampling.warn_spread="
                       f"{opts.warn_spread:g}): the prior is more certain than the data allow")
    if row.get("margin", math.inf) < opts.warn_margin:
        parts = " and ".join(f"{key} {value:+.2f} dB" for key, value in margin_estimates(row, calibrated).items())
        reasons.append(f"it is estimated {row['margin']:+.2f} dB better than {opts.warn_baseline} ({parts}; < "
                       f"sampling.warn_margin={opts.warn_margin:g} dB): it is likely no better than "
                       f"{opts.warn_baseline}")
    return reasons


# --- per run -------------------------------------------------------------------------------------------------------

def summarize(rows: list[dict], calibration: Calibration | None, reliability: dict | None) -> dict:
    """The summary entries: the mean of every column of `FIELDS` that all rows have (NaN-aware), `n_warned`,
    `warning` (at least half the slices warned), `calibrated`, and the pooled `reliability` diagram."""
    summary = {key: float(np.nanmean([r[key] for r in rows])) for key in FIELDS if key != "warn" and rows
               and all(key in r for r in rows) and not all(math.isnan(r[key]) for r in rows)}
    if rows and all("warn" in r for r in rows):
        summary["n_warned"] = int(sum(r["warn"] for r in rows))
        summary["warning"] = int(2 * summary["n_warned"] >= len(rows))
    summary["calibrated"] = calibration is not None
    if reliability is not None:
        summary["reliability"] = reliability
    return summary


def read_maps(out: str, rows: list[dict], mat_path) -> list[dict]:
    """`recon`, `truth` (magnitudes), `error_std`, `baseline` (magnitude, when saved), and the row's `cv_error` and
    `spread_level` (with cross-validation) of the finished `rows` of folder `out`, from their `.mat` files
    (`mat_path(out, fname, slice)`); rows whose file has no error map are left out."""
    slices = []
    for r in rows:
        mat = scipy.io.loadmat(mat_path(out, r["fname"], r["slice"]))
        if "error_std" not in mat:
            continue
        item = {"recon": np.abs(mat["recon"]), "truth": np.abs(mat["ground_truth"]), "error_std": mat["error_std"]}
        if "baseline" in mat:
            item["baseline"] = np.abs(mat["baseline"])
        item.update({k: r[k] for k in ("cv_error", "spread_level") if k in r})
        slices.append(item)
    return slices


def reliability(slices: list[dict], region_fn, levels=RELIABILITY_LEVELS) -> dict | None:
    """Nominal against observed coverage of `±z(p)·error_std`, pooled over the object pixels (`region_fn(truth)`)
    of `slices` (`read_maps`); None without slices."""
    if not slices:
        return None
    error = np.concatenate([np.abs(s["recon"] - s["truth"])[region_fn(s["truth"])] for s in slices])
    spread = np.concatenate([s["error_std"][region_fn(s["truth"])] for s in slices])
    return {"nominal": list(levels), "observed": metrics.coverage(error, spread, levels)}


def cv_ratio(slices: list[dict]) -> float:
    """ρ (module docstring) of validation `slices` (`read_maps`): the geometric mean of `spread_level / cv_error`;
    1 unless every slice has both levels, positive."""
    pairs = [(s.get("spread_level", math.nan), s.get("cv_error", math.nan)) for s in slices]
    if not pairs or not all(a > 0 and b > 0 for a, b in pairs):
        return 1.0
    return math.exp(float(np.mean([math.log(a / b) for a, b in pairs])))


def at_level(slices: list[dict], cv_level: str, ratio: float) -> list[dict]:
    """`slices` of an uncalibrated run (`read_maps`, so ρ = 1) with their maps set to the level of ρ = `ratio`:
    changed for the levels `ON_ONE_SCALE` only, on the slices that have both levels."""
    if cv_level not in ON_ONE_SCALE:
        return slices
    return [{**s, "error_std": np.sqrt(to_level(s["error_std"].astype(np.float64) ** 2,
                                                cv_map_level(s["spread_level"], s["cv_error"], cv_level, ratio),
                                                s["error_std"].shape))}
            if "spread_level" in s and "cv_error" in s else s for s in slices]


def with_detail(slices: list[dict], reference: float, power: float) -> list[dict]:
    """`slices` (`read_maps`) with each map's variance times `detail_factor` of its reconstruction."""
    return [{**s, "error_std": s["error_std"] * math.sqrt(detail_factor(fine_detail(s["recon"]), reference, power))}
            for s in slices]


def calibrated(slices: list[dict], calibration: Calibration, cv_level: str,
               detail_power: float = 0.0) -> list[dict]:
    """Uncalibrated `slices` (`read_maps`) with their maps as `calibration` makes them: at its level, adjusted for
    detail (`detail_power`), times k."""
    return [{**s, "error_std": calibration.scale * s["error_std"]}
            for s in with_detail(at_level(slices, cv_level, calibration.cv_ratio), calibration.detail, detail_power)]


def fit(slices: list[dict], region_fn, cv_level: str = "spread", detail_power: float = 0.0) -> Calibration:
    """The calibration (module docstring) of uncalibrated error maps on validation `slices` (`read_maps`) of a run
    with `sampling.cv_level` = `cv_level` and `sampling.detail_power` = `detail_power`."""
    if not slices:
        raise ValueError("no validation slice has an error map: give sampling.num_samples ≥ 2 or "
                         "sampling.noise_replicas ≥ 1 (with a method that has a noise response)")
    ratio_cv = cv_ratio(slices) if cv_level in ON_ONE_SCALE else 1.0
    fractions = [fine_detail(s["recon"]) for s in slices]
    detail = math.exp(float(np.mean(np.log(fractions)))) if detail_power and min(fractions) > 0 else 0.0
    slices = with_detail(at_level(slices, cv_level, ratio_cv), detail, detail_power)
    scores = []
    for s in slices:
        inside = region_fn(s["truth"])
        error, spread = np.abs(s["recon"] - s["truth"])[inside], s["error_std"][inside].astype(np.float64)
        scores.append(np.where(error > 0, error / np.where(spread > 0, spread, 0.0), 0.0))
    with np.errstate(divide="ignore"):
        scale = metrics.conformal_quantile(np.concatenate(scores), CALIBRATION_LEVEL) / metrics.gaussian_z(
            CALIBRATION_LEVEL)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"the error maps of the {len(slices)} validation slice(s) are zero on too many object "
                         f"pixels to be calibrated (scale {scale}); raise sampling.num_samples or "
                         f"sampling.noise_replicas, or calibrate on more slices (--tune_slices)")
    predicted = [float(np.mean((scale * s["error_std"]) ** 2)) for s in slices]
    mse = [_mse(s["recon"], s["truth"]) for s in slices]
    mse_scale = math.exp(float(np.mean(np.log(np.divide(mse, predicted)))))
    ratio = 1.0
    if all("baseline" in s for s in slices):
        expected = [_mse(s["baseline"], s["recon"]) + mse_scale * p for s, p in zip(slices, predicted)]
        ratio = math.exp(float(np.mean(np.log([_mse(s["baseline"], s["truth"]) / e
                                               for s, e in zip(slices, expected)]))))
    return Calibration(scale=float(scale), mse_scale=mse_scale, baseline_ratio=ratio, cv_ratio=ratio_cv,
                       detail=detail)


def log_warnings(fname: str, index: int, row: dict, opts: Options, calibrated: bool) -> None:
    for reason in warnings(row, opts, calibrated):
        logging.warning("%s slice %d is warned: %s", fname, index, reason)

