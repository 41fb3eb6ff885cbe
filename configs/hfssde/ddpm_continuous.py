"""HFS-SDE with the DDPM score network: the configuration of the paper's experiments."""
from configs.default_fastMRI_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "hfssde"
    config.training.mask_type = "low_frequency"
    config.training.acs = 16
    config.sampling.snr = 0.16
    config.sampling.snr_accelerated = 0.32
    return config
