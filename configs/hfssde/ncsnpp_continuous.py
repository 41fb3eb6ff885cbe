"""HFS-SDE with the NCSN++ score network (score_sde's published NCSN++ settings; the other keys as with DDPM)."""
from configs.hfssde.ddpm_continuous import get_config as ddpm_config
from configs.default_fastMRI_configs import set_ncsnpp_model


def get_config():
    return set_ncsnpp_model(ddpm_config())
