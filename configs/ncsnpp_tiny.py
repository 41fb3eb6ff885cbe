"""A tiny CPU configuration of the NCSN++ network for tests and smoke runs: 32×32 images, 2 levels, 16 filters.

    python main.py --mode train --config configs/ncsnpp_tiny.py
"""
from configs.default_fastMRI_configs import set_ncsnpp_model
from configs.tiny import get_config as tiny_config


def get_config(sde: str = "hfssde"):
    config = set_ncsnpp_model(tiny_config(sde))
    config.model.nf = 16
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.0
    return config
