"""Defaults shared by every fastMRI configuration (the published values).

Method files (`configs/{hfssde,vp,ve}/ddpm_continuous.py`) start from `get_default_configs()` and override a few
keys. Every key is read somewhere in the code; `python main.py --config <file> --config.<group>.<key>=<value>`
overrides any of them from the command line.
"""
import os

import ml_collections
import torch


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Training.
    config.training = training = ml_collections.ConfigDict()
    training.sde = "hfssde"  # hfssde | vpsde | vesde | subvpsde
    training.batch_size = 16  # per process (torchrun with K processes trains with K × batch_size)
    training.epochs = 1000
    training.n_iters = 0  # stop after this many steps when > 0 (otherwise after `epochs`)
    # Frequencies in steps (epochs for epoch_snapshot_freq); a value <= 0 turns that action off.
    training.snapshot_freq = 50000  # checkpoints/checkpoint_step_{step}.pth
    training.epoch_snapshot_freq = 5  # checkpoints/checkpoint_{epoch}.pth every this many epochs
    training.keep_epoch_checkpoints = 3  # keep the last this many checkpoint_{epoch}.pth (<= 0: keep every one)
    training.keep_epochs = ()  # epochs whose checkpoint_{epoch}.pth is kept as well, e.g. "(190,)"
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 10000  # checkpoints-meta/checkpoint.pth, the resume point
    training.snapshot_sampling = False  # log a reconstruction of one validation slice (sampling.* settings)
    training.likelihood_weighting = False
    training.continuous = True
    training.reduce_mean = True
    training.eps = 1e-5  # smallest diffusion time drawn in the loss
    training.mask_type = "low_frequency"  # low-frequency mask M_lf of HFS-SDE: low_frequency | center
    training.acc = None
    training.acs = 16
    training.mean_equal = "noequal"  # "equal": e^c replaced by (1 + c/1e6)^1e6 as in the paper's ablation
    training.skip_slices = 6  # first slices of each volume left out of training (mostly noise)
    training.num_workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                               os.cpu_count() or 1)  # loader processes: at most one per CPU core
    training.bf16 = False  # bf16 autocast (CUDA only)
    training.compile = False  # torch.compile the score network (CUDA only)
    training.channels_last = False
    training.init_checkpoint = ""  # start a new run from this checkpoint's (EMA) weights: fine-tuning

    # Sampling / reconstruction.
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"  # pc | ode | ddim | zero_filled | sense | l1wavelet
    sampling.predictor = "euler_maruyama"  # euler_maruyama | reverse_diffusion | none
    sampling.corrector = "langevin"  # langevin | none
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.snr = 0.16
    sampling.snr_accelerated = 0.32  # snr used instead when accelerated_sampling is on
    sampling.mse = 2.5  # data-consistency weight of the predictor
    sampling.corrector_mse = 0.1  # data-consistency weight of the corrector
    sampling.accelerated_sampling = False
    sampling.N = 100  # sampling steps when accelerated_sampling is on (else model.num_scales)
    sampling.eps = 1e-3  # last diffusion time of the sampler (VE: 1e-5)
    sampling.project_score = False  # HFS: project the predictor's score into high-frequency space
    # Clean-image options (sampling.finish; off as published): the coil-map support, a last denoising step, and a
    # final data-consistency step: none | replace (measured samples replace the predicted ones) | cg (dc_lambda).
    sampling.support_mask = False
    sampling.denoise = False
    sampling.final_dc = "none"
    sampling.dc_lambda = 0.01
    sampling.eta = 0.0  # ddim: 0 deterministic steps, 1 ancestral (DDPM-like) noise
    sampling.dc_iters = 5  # ddim: conjugate-gradient steps of the data consistency on each denoised estimate
    # Noise-aware data consistency (sampling.py): the noise level estimated from the data sets the proximal weight
    # lambda_t = dc_scale * sigma^2 / sigma_t^2 of the DDIM steps and of final_dc='cg', and CG stops once the data
    # residual reaches discrepancy * sigma * sqrt(measured samples). Off as published.
    sampling.noise_aware = False
    sampling.dc_scale = 1.0
    sampling.discrepancy = 1.0
    sampling.num_samples = 1  # posterior samples per slice: the mean is scored, their std is the uncertainty map
    sampling.save_samples = False  # also store every sample in the .mat files
    # Error map and warnings (runners/uncertainty.py): pseudo-replicas of the measurement noise through the method's
    # last data consistency (0: the map is the samples' spread alone), the Gaussian window (pixels) that pools the
    # map's variances, a calibration.json of `--mode calibrate`, and the warning thresholds (0 or '': off): data
    # misfit in noise units, sample spread over propagated noise, and the classical baseline whose predicted error
    # the reconstruction must beat. The misfit test is off by default: without a final data-consistency step a good
    # reconstruction leaves a misfit of several noise units (5-6 on the brain demo's own test slices, where it beats
    # l1-wavelet by 3 dB), so a fixed threshold warns about good slices; set it from a calibration set.
    # cross_validate: k-space cross-validation (runners/uncertainty.py): per fold one more sample with every
    # cv_every-th measured line outside the centre held out, scored on them (cv_error, pooled over cv_folds disjoint
    # folds; about cv_folds/K more time), and warn_baseline likewise (cv_margin: the baseline warning averages it
    # with the calibrated pred_margin); cv_level: the map's level follows the geometric mean of the spread's and
    # cv_error (calibrated to one scale), the larger of the two, cv_error, or the spread.
    sampling.cross_validate = False
    sampling.cv_every = 4  # with cross_validate: every 4th measured line outside the centre is held out (≥ 2)
    sampling.cv_folds = 2  # with cross_validate: folds of held-out lines, disjoint (1 to cv_every)
    sampling.cv_level = "geomean"  # with cross_validate: the map's level: 'geomean', 'max', 'cv', 'spread'
    # once calibrated: the map's variance times (detail / the validation slices' detail)^detail_power, detail the
    # share of the reconstruction's spectral energy beyond min(H, W)/8 (runners/uncertainty.py; 0: off)
    sampling.detail_power = 0.3
    sampling.noise_replicas = 0
    sampling.error_smoothing = 2.0
    sampling.calibration = ""
    sampling.warn_misfit = 0.0
    sampling.warn_spread = 0.0
    sampling.warn_baseline = ""
    sampling.warn_margin = 0.5  # dB: warn when the method is not predicted to beat warn_baseline by this much
    sampling.tuned = ""  # best.json of `main.py --mode tune`: its sampler settings replace these
    sampling.batch_size = 1  # slices per sampler run; 0: automatic (CUDA: the most that fit the free memory; CPU: 4)
    sampling.mask_type = "uniform"  # uniform | cartesian | random_uniform | center | low_frequency
    sampling.acc = 10
    sampling.acs = 24
    sampling.mask_seed = 0  # seed of the random mask families when a mask is generated
    sampling.datashift = "phantom"  # which test set: phantom | knee | brain (photom accepted)
    sampling.folder = ""  # run folder under --workdir holding checkpoints/
    sampling.ckpt = 190  # epoch of checkpoints/checkpoint_{ckpt}.pth
    sampling.checkpoint = ""  # explicit checkpoint file; overrides folder/ckpt
    sampling.output_dir = ""  # where reconstructions go; empty: <workdir>/<folder>/samples/<setting>
    sampling.use_ema = False  # the published reconstructions use the raw weights
    sampling.bf16 = False  # run the network under bf16 autocast (CUDA only)
    sampling.compile = False  # torch.compile the network (CUDA only; the first slices include the compilation)
    sampling.seed = 0
    sampling.max_slices = 0  # reconstruct at most this many slices when > 0
    sampling.show_progress = True
    sampling.cg_iters = 30  # conjugate-gradient iterations of CG-SENSE and of final_dc='cg'
    sampling.l1_lambda = 1e-3  # baselines: l1-wavelet regularisation weight
    sampling.l1_iters = 100

    # Data.
    config.data = data = ml_collections.ConfigDict()
    data.image_size = 320
    data.num_channels = 2
    data.centered = False
    data.normalize_type = "std"  # std | img_std | minmax
    data.normalize_coeff = 1.5
    data.root = "data/phantom/train"  # folder of fastMRI multi-coil .h5 files (training)
    data.maps_root = ""  # folder of s_maps files; empty: `<root>_maps` beside it
    data.eval_root = "data/phantom/val"
    data.eval_maps_root = ""
    data.test_roots = ml_collections.ConfigDict(
        {"phantom": "data/phantom/test", "knee": "data/fastMRI/knee/test", "brain": "data/fastMRI/brain/test"})
    # Maps folder of each test set; empty: `<test root>_maps` beside it.
    data.test_maps_roots = ml_collections.ConfigDict({"phantom": "", "knee": "", "brain": ""})
    # Training augmentation (utils/augment.py; every value 0 = off, as published).
    data.augment = augment = ml_collections.ConfigDict()
    augment.flip = 0.0  # probability of a left-right flip
    augment.rotate = 0.0  # largest rotation, degrees
    augment.scale = 0.0  # largest relative zoom
    augment.gamma = 0.0  # contrast: |x|^gamma with |log gamma| <= this
    augment.bias = 0.0  # smooth multiplicative intensity field exp(b*field), |b| <= this
    augment.phase = 0.0  # replace the phase by a smooth random phase of at most this many radians
    augment.scalp = 0.0  # probability of adding skull and scalp layers around the object
    augment.min_coils = 0  # keep a random run of min_coils..C coils (0: all)
    augment.acquisition = 0.0  # probability of a freshly simulated coil array, noise and maps (keys below)
    augment.max_coils = 0  # its coil count: max(min_coils, 2)..max_coils (0: the stored count)
    augment.oversample = 0.0  # probability that its coils surround a 2x oversampled readout
    augment.loops = 0.0  # probability of surface loops instead of a birdcage
    augment.noise = 0.0  # its complex noise: up to this fraction of the brightest coil image
    augment.noise_correlation = 0.0  # its coil noise correlation: up to this value
    augment.estimated_maps = 0.0  # probability of maps estimated from the centre columns instead of the true ones
    augment.fov_mm = 240.0  # field of view assumed for the scalp layer thicknesses
    data.skip_broken = False  # skip unreadable files with a warning instead of stopping
    data.mask_root = "mask"  # folder of published-name masks (<name>.mat, key "mask")

    # Model.
    config.model = model = ml_collections.ConfigDict()
    model.name = "ddpm"
    model.sigma_min = 0.01
    model.sigma_max = 348.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True

    # Optimisation.
    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.seed = 1000
    config.device = "cuda" if torch.cuda.is_available() else "cpu"
    return config


def set_ncsnpp_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switch `config` to the NCSN++ network with the published score_sde / score-MRI model settings (VE-SDE,
    continuous: BigGAN blocks, FIR resampling, residual input pyramid, Fourier features of log σ)."""
    model = config.model
    model.name = "ncsnpp"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True
    model.resblock_type = "biggan"  # biggan | ddpm
    model.progressive = "none"  # none | output_skip | residual
    model.progressive_input = "residual"  # none | input_skip | residual
    model.progressive_combine = "sum"  # sum | cat
    model.embedding_type = "fourier"  # fourier (of log σ) | positional (of σ)
    model.init_scale = 0.0
    model.fourier_scale = 16.0
    return config
