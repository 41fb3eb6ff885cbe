"""VE-SDE baseline with the DDPM score network."""
from configs.default_fastMRI_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.sampling.eps = 1e-5
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.snr = 0.1
    config.sampling.snr_accelerated = 0.1
    config.sampling.mse = 5.0
    config.sampling.corrector_mse = 5.0
    config.sampling.N = 300
    config.model.dropout = 0.0
    config.model.scale_by_sigma = True
    config.model.ema_rate = 0.999
    return config
