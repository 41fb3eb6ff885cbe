"""A published-format checkpoint of the paper configuration loads strictly and drives one sampler step."""
import pytest
import torch

import sampling
from configs.hfssde.ddpm_continuous import get_config
from models import get_score_fn
from runners.build import create_model
from utils.checkpoints import CheckpointError, load_model_weights
from utils.mri import sense_adjoint
from runners import build


def published_checkpoint(model):
    """The dict layout the published training wrote: DataParallel `module.` keys, EMA, optimizer, step. The EMA
    averages differ from the raw weights (raw + 0.01), so the two loading paths give different networks."""
    averages = [p.detach() + 0.01 for p in model.parameters()]
    return {"optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": list(range(len(averages)))}]},
            "model": {"module." + k: v for k, v in model.state_dict().items()},
            "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": averages},
            "step": 123}


@pytest.fixture(scope="module")
def paper_model():
    config = get_config()
    config.device = "cpu"
    torch.manual_seed(0)
    return config, create_model(config)


def test_paper_checkpoint_loads_and_runs_one_step(tmp_path, paper_model):
    config, source = paper_model
    path = tmp_path / "checkpoint_190.pth"
    torch.save(published_checkpoint(source), path)
    raw = create_model(config)
    assert load_model_weights(str(path), raw, use_ema=False, device="cpu") == 123
    for a, b in zip(raw.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    model = create_model(config)
    assert load_model_weights(str(path), model, use_ema=True, device="cpu") == 123
    for a, b in zip(model.parameters(), source.parameters()):
        assert torch.equal(a, b + 0.01)

    sde = build.make_sde(config)
    score_fn = get_score_fn(sde, model.eval(), train=False)
    h = config.data.image_size
    csm = torch.ones(1, 2, h, h, dtype=torch.complex64) / 2 ** 0.5
    y = torch.randn(1, 2, h, h, dtype=torch.complex64)
    mask = torch.zeros(1, 1, h, h)
    mask[..., ::4] = 1
    x = torch.randn(1, 2, h, h)
    with torch.no_grad():
        aty = sense_adjoint(mask * y, csm, mask)
        out, out_mean = sampling.euler_maruyama_step(sde, score_fn, x, torch.tensor([0.5]), aty, csm, mask,
                                                     weight=2.5, noise=torch.randn_like(x), num_steps=100)
    assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(out_mean).all()


def test_checkpoint_of_another_size_lists_the_shapes(tmp_path):
    config = get_config()
    config.device, config.model.nf, config.data.image_size = "cpu", 64, 32
    torch.save(published_checkpoint(create_model(config)), tmp_path / "small.pth")
    config.model.nf = 96
    with pytest.raises(CheckpointError) as err:
        load_model_weights(str(tmp_path / "small.pth"), create_model(config), use_ema=False, device="cpu")
    text = str(err.value)
    assert "small.pth" in text and "all_modules.1.weight" in text and "model.nf" in text
