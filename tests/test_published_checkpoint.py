"""A published-format checkpoint of the paper configuration loads strictly and drives one sampler step."""
import numpy as np
import pytest
import torch

import sampling
from configs.hfssde.ddpm_continuous import get_config
from models import get_score_fn
from runners import build
from runners.build import create_model
from tests.conftest import np_dc, np_hp
from utils.checkpoints import CheckpointError, load_model_weights
from utils.mri import sense_adjoint


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

    # One Euler–Maruyama step driven by the loaded network, against the formula in float64 numpy with the network's
    # output as the score (no division by the std) at the label σ(t) = √(1 − e^{2c(t)}).
    sde = build.make_sde(config)
    seen = {}
    model.register_forward_hook(lambda _, args, out: seen.update(labels=args[1], score=out.double().numpy()))
    score_fn = get_score_fn(sde, model.eval(), train=False)
    h = config.data.image_size
    gen = torch.Generator().manual_seed(1)
    csm = torch.ones(1, 2, h, h, dtype=torch.complex64) / 2 ** 0.5
    y = torch.randn(1, 2, h, h, dtype=torch.complex64, generator=gen)
    mask = torch.zeros(1, 1, h, h)
    mask[..., ::4] = 1
    x, z = torch.randn(1, 2, h, h, generator=gen), torch.randn(1, 2, h, h, generator=gen)
    with torch.no_grad():
        aty = sense_adjoint(mask * y, csm, mask)
        out, out_mean = sampling.euler_maruyama_step(sde, score_fn, x, torch.tensor([0.5]), aty, csm, mask,
                                                     weight=2.5, noise=z, num_steps=100)
    beta, c = 0.1 + 0.5 * (20 - 0.1), -0.25 * 0.5 ** 2 * (20 - 0.1) - 0.5 * 0.5 * 0.1
    np.testing.assert_allclose(seen["labels"].double().numpy(), [(1 - np.exp(2 * c)) ** 0.5], rtol=1e-6)
    lf = np.zeros((h, h))
    lf[:, (h - 16) // 2:(h + 16) // 2] = 1  # low_frequency_acs16: the 16 centre columns
    xs, s = x.double().numpy(), seen["score"]
    d = np_dc(xs, (mask * y).numpy().astype(np.complex128), csm.numpy().astype(np.complex128),
              mask[0, 0].double().numpy(), s, 2.5)
    want_mean = xs + (-0.5 * beta * np_hp(xs, lf) - beta * (s - d)) * (-0.01)
    want = want_mean + beta ** 0.5 * 0.1 * np_hp(z.double().numpy(), lf)
    scale = np.abs(want).max()
    np.testing.assert_allclose(out_mean.double().numpy(), want_mean, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(out.double().numpy(), want, rtol=0, atol=1e-5 * scale)


def test_checkpoint_of_another_size_lists_the_shapes(tmp_path):
    config = get_config()
    config.device, config.model.nf, config.data.image_size = "cpu", 64, 32
    torch.save(published_checkpoint(create_model(config)), tmp_path / "small.pth")
    config.model.nf = 96
    with pytest.raises(CheckpointError) as err:
        load_model_weights(str(tmp_path / "small.pth"), create_model(config), use_ema=False, device="cpu")
    text = str(err.value)
    assert "small.pth" in text and "all_modules.1.weight" in text and "model.nf" in text
