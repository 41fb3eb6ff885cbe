"""The brain demo: a small DDPM at 128×128 on the public brain set, fine-tuned from the phantom demo network.

    python data_prepare/generate_brain_demo.py --source <nilearn wheel or template> --out data/brain_demo
    bash train_fastMRI.sh hfssde brain_demo      # and vp for the comparison
    bash test_fastMRI.sh demo

Training sees the MNI152 template's training slabs with on-the-fly augmentation (flips, rotations, zoom, contrast,
intensity bias, phase, skull and scalp, coil count); `data/brain_demo/test` holds held-out slices with skull and
scalp. `get_config(sde)` is shared by configs/hfssde/brain_demo.py and configs/vp/brain_demo.py.
"""
from configs.phantom_demo import get_config as phantom_config

DEMO_DATA = "data/brain_demo"


def get_config(sde: str):
    config = phantom_config(sde)
    training, sampling, data, optim = config.training, config.sampling, config.data, config.optim
    training.n_iters = 600
    training.snapshot_freq_for_preemption = 100
    training.init_checkpoint = f"demo/{'hfssde' if sde == 'hfssde' else 'vpsde'}_phantom_demo.pth"

    sampling.datashift = "brain"
    sampling.acc = 8
    # Chosen on the validation slices (`main.py --mode tune`, demo/README.md): the image kept on the coil-map
    # support (the ESPIRiT maps are zero outside the head), the DDIM sampler's η and ℓ1-wavelet's λ (PSNR-best at 4×,
    # 8× and 10×).
    sampling.support_mask = True
    sampling.eta, sampling.dc_lambda, sampling.dc_iters = 1.0, 1e-3, 20
    # Noise-aware data consistency (sampling.py): lambda_t = sigma^2 / sigma_t^2 with the noise level estimated from
    # each slice's data, CG stopped at 0.6 x the discrepancy level, and no final data-consistency step (the last
    # denoised estimate is the result: a final fit to the data puts the measured noise back, amplified by the
    # g-factor). Chosen on the shift benchmark's validation slices of three acquisitions at 8x (bench/README.md),
    # not on the training simulator alone: the fixed lambda = 1e-3 fits the noise of a fastMRI-like scan into a
    # grain over the head.
    sampling.noise_aware, sampling.dc_scale, sampling.discrepancy = True, 1.0, 0.6
    sampling.final_dc = "none"
    sampling.l1_lambda = 1e-4
    # The demo's sampler: the mean of 4 posterior samples of 50 DDIM steps (200 network evaluations per slice, the
    # budget of the published 100-step PC sampler, which stays available as sampling.method=pc).
    sampling.method, sampling.N, sampling.num_samples = "ddim", 50, 4

    data.root = f"{DEMO_DATA}/train"
    data.eval_root = f"{DEMO_DATA}/val"
    data.test_roots.brain = f"{DEMO_DATA}/test"
    augment = data.augment
    augment.flip, augment.rotate, augment.scale = 0.5, 10.0, 0.1
    augment.gamma, augment.bias, augment.phase = 0.3, 0.3, 3.0
    augment.scalp, augment.min_coils = 0.7, 4

    optim.lr = 5e-4
    optim.warmup = 100
    return config
