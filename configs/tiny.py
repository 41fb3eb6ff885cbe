"""A tiny CPU configuration for tests and smoke runs: 32×32 images, a 2-level DDPM with 32 filters.

    python main.py --mode train --config configs/tiny.py
"""
from configs.default_fastMRI_configs import get_default_configs


def get_config(sde: str = "hfssde"):
    config = get_default_configs()
    config.training.sde = sde
    config.training.batch_size = 2
    config.training.acs = 4
    config.training.num_workers = 0
    config.training.log_freq = 5
    config.training.eval_freq = 10
    config.training.snapshot_freq = 20
    config.training.snapshot_freq_for_preemption = 10
    config.sampling.acc = 4
    config.sampling.acs = 6
    config.sampling.N = 10
    config.sampling.accelerated_sampling = True
    config.sampling.show_progress = False
    config.data.image_size = 32
    config.model.nf = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.0
    config.optim.warmup = 0
    config.optim.lr = 1e-3
    config.device = "cpu"
    return config
