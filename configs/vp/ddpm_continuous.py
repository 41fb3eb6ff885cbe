"""VP-SDE baseline with the DDPM score network."""
from configs.default_fastMRI_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vpsde"
    config.sampling.snr = 0.27
    config.sampling.snr_accelerated = 0.43
    config.sampling.corrector_mse = 2.5
    return config
