"""VP-SDE demo on 128×128 phantoms, the baseline for the HFS-SDE demo (see configs/phantom_demo.py)."""
from configs.phantom_demo import get_config as demo_config


def get_config():
    config = demo_config("vpsde")
    config.sampling.checkpoint = "demo/vpsde_phantom_demo.pth"
    return config
