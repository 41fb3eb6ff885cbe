"""VP-SDE demo on 128×128 brain slices, the baseline for the HFS-SDE brain demo (see configs/brain_demo.py)."""
from configs.brain_demo import get_config as demo_config


def get_config():
    config = demo_config("vpsde")
    config.sampling.checkpoint = "demo/vpsde_brain_demo.pth"
    return config
