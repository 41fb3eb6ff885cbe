"""HFS-SDE demo on 128×128 phantoms (see configs/phantom_demo.py)."""
from configs.phantom_demo import get_config as demo_config


def get_config():
    config = demo_config("hfssde")
    config.sampling.checkpoint = "demo/hfssde_phantom_demo.pth"
    return config
