"""Score-matching loss, optimiser schedule and the one-step train/eval function."""
import pytest
import torch

import losses
from configs.tiny import get_config
from runners.build import create_model
from models.ema import ExponentialMovingAverage
from runners import build


class AffineScore(torch.nn.Module):
    """score = a·x + b·label: a tiny differentiable stand-in for the network."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.7))
        self.b = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, labels):
        return self.a * x + self.b * labels[:, None, None, None]


def manual_loss(sde, model, batch, seed, likelihood_weighting=False, eps=1e-5):
    torch.manual_seed(seed)
    t = torch.rand(batch.shape[0]) * (1 - eps) + eps
    z = sde.project(torch.randn_like(batch))
    mean, std = sde.marginal_prob(batch, t)
    std4 = std[:, None, None, None]
    score = sde.project(model(mean + std4 * z, std))
    if likelihood_weighting:
        g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
        return ((score + z / std4) ** 2).flatten(1).mean(1).mul(g2).mean()
    return ((score * std4 + z) ** 2).flatten(1).mean(1).mean()


@pytest.mark.parametrize("name", ["hfssde", "vpsde", "vesde"])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_loss_matches_the_formula(name, likelihood_weighting):
    sde = build.make_sde(get_config(name))
    model, batch = AffineScore(), torch.randn(3, 2, 32, 32)
    loss_fn = losses.get_sde_loss_fn(sde, train=True, likelihood_weighting=likelihood_weighting)
    torch.manual_seed(4)
    got = loss_fn(model, batch)
    want = manual_loss(sde, model, batch, 4, likelihood_weighting)
    assert torch.allclose(got, want, rtol=1e-5)


def test_hfs_loss_ignores_low_frequency_score_content():
    sde = build.make_sde(get_config("hfssde"))
    batch = torch.randn(2, 2, 32, 32)
    low = sde.low_pass(torch.randn(2, 2, 32, 32)) * 50

    class Shifted(AffineScore):
        def forward(self, x, labels):
            return super().forward(x, labels) + low

    loss_fn = losses.get_sde_loss_fn(sde, train=True)
    torch.manual_seed(0)
    plain = loss_fn(AffineScore(), batch)
    torch.manual_seed(0)
    shifted = loss_fn(Shifted(), batch)
    assert torch.allclose(plain, shifted, rtol=1e-5)


def test_sum_reduction_is_half_the_sum():
    sde = build.make_sde(get_config("vpsde"))
    batch = torch.randn(2, 2, 8, 8)
    torch.manual_seed(1)
    mean_loss = losses.get_sde_loss_fn(sde, True, reduce_mean=True)(AffineScore(), batch)
    torch.manual_seed(1)
    sum_loss = losses.get_sde_loss_fn(sde, True, reduce_mean=False)(AffineScore(), batch)
    assert torch.allclose(sum_loss, mean_loss * 0.5 * 2 * 8 * 8, rtol=1e-5)


def test_warmup_and_clipping():
    config = get_config()
    config.optim.warmup, config.optim.lr, config.optim.grad_clip = 10, 1e-2, 0.5
    p = torch.nn.Parameter(torch.ones(4))
    optimizer = build.make_optimizer(config, [p])
    optimize_fn = build.make_optimize_fn(config)
    p.grad = torch.full((4,), 3.0)
    norm = optimize_fn(optimizer, [p], step=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3)
    assert norm.item() == pytest.approx(6.0)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(0.5, rel=1e-5)
    optimize_fn(optimizer, [p], step=50)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)


def test_unknown_optimizer():
    config = get_config()
    config.optim.optimizer = "Lion"
    with pytest.raises(ValueError, match="unknown optim.optimizer 'Lion'"):
        build.make_optimizer(config, [torch.nn.Parameter(torch.ones(1))])


def _state(config):
    model = create_model(config)
    return {"model": model, "optimizer": build.make_optimizer(config, model.parameters()),
            "ema": ExponentialMovingAverage(model.parameters(), decay=0.9), "step": 0}


def test_train_step_updates_model_ema_and_step_and_eval_uses_ema():
    config = get_config()
    sde = build.make_sde(config)
    state = _state(config)
    batch = torch.randn(2, 2, 32, 32)
    train_step = losses.get_step_fn(sde, True, build.make_optimize_fn(config))
    eval_step = losses.get_step_fn(sde, False)
    before = [p.detach().clone() for p in state["model"].parameters()]
    out = train_step(state, batch)
    assert state["step"] == 1 and torch.isfinite(out["loss"]) and out["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, state["model"].parameters()))
    raw = [p.detach().clone() for p in state["model"].parameters()]
    torch.manual_seed(3)
    with_ema = eval_step(state, batch)["loss"]
    assert all(torch.equal(a, b) for a, b in zip(raw, state["model"].parameters()))
    state["ema"].copy_to(state["model"].parameters())
    torch.manual_seed(3)
    direct = losses.get_sde_loss_fn(sde, False)(state["model"], batch)
    assert torch.allclose(with_ema, direct)


def test_non_finite_loss_stops_before_the_update():
    config = get_config()
    sde = build.make_sde(config)
    state = _state(config)
    state["step"] = 17
    before = [p.detach().clone() for p in state["model"].parameters()]
    batch = torch.full((2, 2, 32, 32), float("nan"))
    with pytest.raises(losses.NonFiniteLossError, match="at step 17"):
        losses.get_step_fn(sde, True, build.make_optimize_fn(config))(state, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, state["model"].parameters()))
