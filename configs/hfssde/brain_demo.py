"""HFS-SDE demo on 128×128 brain slices (see configs/brain_demo.py)."""
from configs.brain_demo import get_config as demo_config


def get_config():
    config = demo_config("hfssde")
    config.sampling.checkpoint = "demo/hfssde_brain_demo.pth"
    return config
