"""DDPM score network, EMA, score-function wrappers and checkpoints (CPU, small shapes)."""
import math
import os
import re

import numpy as np
import pytest
import torch

import sde_lib
from configs.hfssde.ddpm_continuous import get_config
from models import MODELS, get_model_fn, get_score_fn
from runners.build import checkpoint_record, create_model
from models.ddpm import DDPM
from models.ema import ExponentialMovingAverage
from models.layers import NIN, AttnBlock, get_timestep_embedding
from utils.atomic import WriteError
from utils.checkpoints import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint


def tiny_config(**model):
    """nf 32 (GroupNorm needs multiples of 32), two levels, attention at 8×8, 16×16 images."""
    config = get_config()
    config.device = "cpu"
    config.model.nf = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (8,)
    config.data.image_size = 16
    for key, value in model.items():
        setattr(config.model, key, value)
    return config


def tiny_model(seed=0, **model):
    torch.manual_seed(seed)
    return create_model(tiny_config(**model))


# Published layout, written out by hand: (key, shape) in state_dict order.
def _resnet(i, cin, cout, temb=128):
    keys = [(f"all_modules.{i}.GroupNorm_0.weight", (cin,)), (f"all_modules.{i}.GroupNorm_0.bias", (cin,)),
            (f"all_modules.{i}.Conv_0.weight", (cout, cin, 3, 3)), (f"all_modules.{i}.Conv_0.bias", (cout,)),
            (f"all_modules.{i}.Dense_0.weight", (cout, temb)), (f"all_modules.{i}.Dense_0.bias", (cout,)),
            (f"all_modules.{i}.GroupNorm_1.weight", (cout,)), (f"all_modules.{i}.GroupNorm_1.bias", (cout,)),
            (f"all_modules.{i}.Conv_1.weight", (cout, cout, 3, 3)), (f"all_modules.{i}.Conv_1.bias", (cout,))]
    if cin != cout:
        keys += [(f"all_modules.{i}.NIN_0.W", (cin, cout)), (f"all_modules.{i}.NIN_0.b", (cout,))]
    return keys


def _attn(i, c):
    keys = [(f"all_modules.{i}.GroupNorm_0.weight", (c,)), (f"all_modules.{i}.GroupNorm_0.bias", (c,))]
    for j in range(4):
        keys += [(f"all_modules.{i}.NIN_{j}.W", (c, c)), (f"all_modules.{i}.NIN_{j}.b", (c,))]
    return keys


def _conv(i, cin, cout, sub=""):
    return [(f"all_modules.{i}.{sub}weight", (cout, cin, 3, 3)), (f"all_modules.{i}.{sub}bias", (cout,))]


EXPECTED_TINY_LAYOUT = (
    [("sigmas", (1000,)),
     ("all_modules.0.weight", (128, 32)), ("all_modules.0.bias", (128,)),
     ("all_modules.1.weight", (128, 128)), ("all_modules.1.bias", (128,))]
    + _conv(2, 2, 32)
    + _resnet(3, 32, 32) + _conv(4, 32, 32, "Conv_0.")            # level 16×16, downsample
    + _resnet(5, 32, 64) + _attn(6, 64)                           # level 8×8 with attention
    + _resnet(7, 64, 64) + _attn(8, 64) + _resnet(9, 64, 64)      # middle
    + _resnet(10, 128, 64) + _resnet(11, 96, 64) + _attn(12, 64)  # decoder 8×8
    + _conv(13, 64, 64, "Conv_0.")                                # upsample
    + _resnet(14, 96, 32) + _resnet(15, 64, 32)                   # decoder 16×16
    + [("all_modules.16.weight", (32,)), ("all_modules.16.bias", (32,))]
    + _conv(17, 32, 2)
)


def test_state_dict_layout_matches_published_structure():
    layout = [(k, tuple(v.shape)) for k, v in tiny_model().state_dict().items()]
    assert layout == EXPECTED_TINY_LAYOUT


def test_parameter_count_of_paper_config():
    def gn(c):
        return 2 * c

    def conv(i, o):
        return 9 * i * o + o

    def dense(i, o):
        return i * o + o

    def resnet(i, o):
        return gn(i) + conv(i, o) + dense(512, o) + gn(o) + conv(o, o) + (dense(i, o) if i != o else 0)

    # 320×320, ch_mult (1,2,2,2): resolutions 320/160/80/40, so attention (16,) only in the middle.
    encoder = [(128, 128), (128, 128), (128, 256), (256, 256)] + [(256, 256)] * 4
    decoder = [(512, 256)] * 8 + [(384, 256), (384, 128), (256, 128), (256, 128)]
    expected = (dense(128, 512) + dense(512, 512) + conv(2, 128)
                + sum(resnet(i, o) for i, o in encoder) + conv(128, 128) + 2 * conv(256, 256)
                + 2 * resnet(256, 256) + gn(256) + 4 * dense(256, 256)
                + sum(resnet(i, o) for i, o in decoder) + 3 * conv(256, 256)
                + gn(128) + conv(128, 2))
    config = get_config()
    config.device = "cpu"
    model = create_model(config)
    assert sum(p.numel() for p in model.parameters()) == expected == 34_425_602
    assert model.sigmas.shape == (1000,)


@pytest.mark.parametrize("shape", [(3, 2, 16, 16), (1, 2, 16, 24)])
def test_output_shape_equals_input_shape(shape):
    model = tiny_model().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert model(x, torch.rand(shape[0])).shape == x.shape


def test_input_size_not_divisible_is_rejected():
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_model()(torch.randn(1, 2, 15, 16), torch.rand(1))


@pytest.mark.parametrize("dim", [32, 33])
def test_time_embedding_matches_numpy(dim):
    t = np.array([0.0, 1e-3, 0.37, 1.0, 348.0])
    half = dim // 2
    args = t[:, None] * np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args), np.zeros((len(t), dim % 2))], axis=1)
    emb = get_timestep_embedding(torch.tensor(t, dtype=torch.float32), dim)
    np.testing.assert_allclose(emb.numpy(), expected, atol=1e-4)


def test_initialisation_follows_ddpm():
    model = tiny_model()
    final = model.all_modules[-1]
    fan_avg = (2 + 32) * 9 / 2
    # init_scale 0 becomes 1e-10 as published: weights ~1e-6, not exactly zero.
    assert final.weight.abs().max() <= math.sqrt(3e-10 / fan_avg)
    assert torch.all(final.bias == 0)
    block = model.all_modules[5]
    assert block.Conv_1.weight.abs().max() <= math.sqrt(3e-10 / (64 * 9))
    bound = math.sqrt(3.0 / ((32 + 64) * 9 / 2))
    assert block.Conv_0.weight.abs().max() <= bound
    assert block.Conv_0.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert torch.all(block.Conv_0.bias == 0) and torch.all(block.Dense_0.bias == 0)
    assert torch.all(block.NIN_0.b == 0)
    assert block.NIN_0.W.abs().max() <= math.sqrt(3 * 0.1 / ((32 + 64) / 2))
    assert model.all_modules[6].NIN_3.W.abs().max() <= math.sqrt(3e-10 / 64)
    sigmas = np.exp(np.linspace(np.log(348.0), np.log(0.01), 1000))
    np.testing.assert_allclose(model.sigmas.numpy(), sigmas, rtol=1e-6)


def test_nin_and_attention_match_explicit_formulas():
    torch.manual_seed(1)
    x = torch.randn(2, 64, 4, 5, dtype=torch.float64)
    nin = NIN(64, 32).double()
    torch.testing.assert_close(nin(x), torch.einsum("bchw,cd->bdhw", x, nin.W) + nin.b[:, None, None])

    block = AttnBlock(64).double()
    torch.nn.init.normal_(block.NIN_3.W)
    h = block.GroupNorm_0(x)
    q, k, v = block.NIN_0(h), block.NIN_1(h), block.NIN_2(h)
    w = torch.einsum("bchw,bcij->bhwij", q, k) / math.sqrt(64)
    w = torch.softmax(w.reshape(2, 4, 5, 20), dim=-1).reshape(2, 4, 5, 4, 5)
    expected = x + block.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
    torch.testing.assert_close(block(x), expected)


def test_centered_and_scale_by_sigma_options():
    x, labels = torch.rand(2, 2, 16, 16), torch.tensor([0.3, 2.0])
    plain = tiny_model().eval()
    config = tiny_config()
    config.data.centered = True
    torch.manual_seed(0)
    centered = create_model(config).eval()
    scaled = tiny_model(scale_by_sigma=True).eval()
    with torch.no_grad():
        out = plain(x, labels)
        # data.centered=False (published) feeds the network 2x - 1.
        torch.testing.assert_close(centered(2 * x - 1, labels), out)
        # With continuous labels, scale_by_sigma divides by the label itself.
        torch.testing.assert_close(scaled(x, labels), out / labels[:, None, None, None])


def test_unconditional_network_has_no_time_layers():
    model = tiny_model(conditional=False).eval()
    assert not any("Dense_0" in k for k in model.state_dict())
    assert model.all_modules[0].weight.shape == (32, 2, 3, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 2, 16, 16), torch.rand(1)).shape == (1, 2, 16, 16)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.nf=16"):
        create_model(tiny_config(nf=16))
    config = tiny_config(ch_mult=(1, 2, 2))
    config.data.image_size = 18
    with pytest.raises(ValueError, match="data.image_size=18"):
        create_model(config)
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        create_model(tiny_config(name="unet"))
    assert MODELS.get("ddpm") is DDPM


def test_create_model_places_model_on_config_device():
    config = tiny_config()
    config.device = "meta"
    model = create_model(config)
    assert isinstance(model, DDPM)
    assert all(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))


class _StubModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.labels = None

    def forward(self, x, labels):
        self.labels = labels
        return x * 3.0


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(0.1, 20.0, 100), sde_lib.VESDE(0.01, 50.0, 100)])
def test_score_fn_labels_are_marginal_std_and_output_is_the_score(sde):
    stub = _StubModel()
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([1e-3, 0.5, 1.0])
    score = get_score_fn(sde, stub, train=False, continuous=True)(x, t)
    torch.testing.assert_close(stub.labels, sde.marginal_std(t))
    torch.testing.assert_close(score, 3.0 * x)
    assert not stub.training
    with pytest.raises(ValueError, match="training.continuous=True"):
        get_score_fn(sde, stub, continuous=False)


def test_bf16_score_fn_runs_under_autocast_and_returns_float32():
    class Conv(torch.nn.Conv2d):
        def forward(self, x, labels):
            out = super().forward(x)
            self.dtype_seen = out.dtype
            return out

    net = Conv(2, 2, 1)
    x, t = torch.randn(2, 2, 4, 4), torch.tensor([0.2, 0.7])
    score = get_score_fn(sde_lib.VPSDE(0.1, 20.0, 100), net, bf16=True)(x, t)
    assert net.dtype_seen == torch.bfloat16 and score.dtype == torch.float32


def test_model_fn_sets_train_and_eval_mode():
    stub = _StubModel()
    get_model_fn(stub, train=True)(torch.zeros(1), torch.zeros(1))
    assert stub.training
    get_model_fn(stub, train=False)(torch.zeros(1), torch.zeros(1))
    assert not stub.training


def test_ema_matches_hand_computation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    ema = ExponentialMovingAverage([p, frozen], decay=0.9)
    shadow = np.array([1.0, -2.0])
    for n, value in enumerate([[3.0, 0.0], [5.0, 1.0], [0.0, 4.0], [2.0, 2.0]], start=1):
        with torch.no_grad():
            p.copy_(torch.tensor(value))
        ema.update([p, frozen])
        decay = min(0.9, (1 + n) / (10 + n))
        shadow = shadow - (1 - decay) * (shadow - np.array(value))
        np.testing.assert_allclose(ema.shadow_params[0].numpy(), shadow, rtol=1e-6)
    state = ema.state_dict()
    assert set(state) == {"decay", "num_updates", "shadow_params"}
    assert state["decay"] == 0.9 and state["num_updates"] == 4 and len(state["shadow_params"]) == 1

    fixed = ExponentialMovingAverage([p], decay=0.5, use_num_updates=False)
    with torch.no_grad():
        p.copy_(torch.tensor([4.0, 4.0]))
    fixed.update([p])
    np.testing.assert_allclose(fixed.shadow_params[0].numpy(), [3.0, 3.0])
    assert fixed.state_dict()["num_updates"] is None


def test_ema_copy_store_restore_and_load_validation():
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
    original = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for s in ema.shadow_params:
            s.fill_(7.0)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    assert all(torch.all(p == 7.0) for p in model.parameters())
    ema.restore(model.parameters())
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), original))
    with pytest.raises(KeyError), ema.average_parameters(model.parameters()):
        assert all(torch.all(p == 7.0) for p in model.parameters())
        raise KeyError("the weights come back even when the block fails")
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), original))

    other = ExponentialMovingAverage(model.parameters(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.999 and all(torch.all(s == 7.0) for s in other.shadow_params)
    wrong = ExponentialMovingAverage(torch.nn.Linear(4, 2).parameters(), decay=0.9).state_dict()
    with pytest.raises(ValueError, match=r"shape \(2, 4\) in the state but \(2, 3\)"):
        ema.load_state_dict(wrong)
    with pytest.raises(ValueError, match="1 shadow parameters but the model has 2"):
        ema.load_state_dict({"decay": 0.9, "num_updates": 0, "shadow_params": [torch.zeros(2, 3)]})


def _training_state(model):
    ema = ExponentialMovingAverage(model.parameters(), decay=0.9999)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    return {"model": model, "ema": ema, "optimizer": optimizer, "step": 0}


def _one_step(state):
    model = state["model"].train()
    loss = model(torch.randn(2, 2, 16, 16), torch.rand(2)).pow(2).mean()
    loss.backward()
    state["optimizer"].step()
    state["ema"].update(model.parameters())
    state["step"] += 1


def test_published_format_checkpoint_loads_strictly(tmp_path):
    source = _training_state(tiny_model(seed=1))
    _one_step(source)
    published = {
        "optimizer": source["optimizer"].state_dict(),
        "model": {"module." + k: v for k, v in source["model"].state_dict().items()},
        "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": source["ema"].shadow_params},
        "step": 1,
    }
    path = tmp_path / "checkpoint_5.pth"
    torch.save(published, path)

    target = _training_state(tiny_model(seed=2))
    assert load_checkpoint(path, target, device="cpu") is target
    assert target["step"] == 1 and target["ema"].num_updates == 1
    for (k, v), w in zip(source["model"].state_dict().items(), target["model"].state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    for s, t in zip(source["ema"].shadow_params, target["ema"].shadow_params):
        torch.testing.assert_close(s, t)
    assert target["optimizer"].state_dict()["state"][0]["step"] == 1


def test_save_checkpoint_writes_published_format_atomically(tmp_path, monkeypatch):
    state = _training_state(tiny_model())
    _one_step(state)
    state["epoch"] = 5
    path = tmp_path / "checkpoints" / "checkpoint_5.pth"
    save_checkpoint(path, state)
    assert os.listdir(path.parent) == ["checkpoint_5.pth"]
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "ema", "optimizer", "step", "epoch"}
    assert all(k.startswith("module.") for k in saved["model"])
    assert set(saved["ema"]) == {"decay", "num_updates", "shadow_params"}

    # Without the prefix, and behind torch.compile's `_orig_mod.`, the weights load too.
    for prefix in ("", "_orig_mod."):
        saved["model"] = {prefix + k.removeprefix("module."): v for k, v in saved["model"].items()}
        torch.save(saved, tmp_path / "variant.pth")
        fresh = _training_state(tiny_model(seed=3))
        load_checkpoint(tmp_path / "variant.pth", fresh, "cpu")
        assert fresh["epoch"] == 5 and fresh["step"] == 1
        torch.testing.assert_close(fresh["model"].all_modules[2].weight, state["model"].all_modules[2].weight)

    # A save that fails midway keeps the previous file and leaves no temporary file behind.
    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(WriteError, match=f"cannot write {re.escape(str(path))}: disk full"):
        save_checkpoint(path, state)
    assert os.listdir(path.parent) == ["checkpoint_5.pth"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 5


def test_checkpoint_of_other_nf_fails_with_shape_list(tmp_path):
    path = tmp_path / "checkpoint_190.pth"
    save_checkpoint(path, _training_state(tiny_model(nf=64)))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, _training_state(tiny_model()), "cpu")
    message = str(info.value)
    assert str(path) in message and "shape mismatches" in message and "model.nf" in message
    assert "all_modules.0.weight: checkpoint (256, 64) vs model (128, 32)" in message

    config = tiny_config()
    config.model.attn_resolutions = (16,)
    with pytest.raises(CheckpointError, match="missing keys") as info:
        load_checkpoint(path, _training_state(create_model(config)), "cpu")
    assert "unexpected keys" in str(info.value)


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "checkpoints" / "checkpoint_190.pth"
    with pytest.raises(FileNotFoundError, match="checkpoint_190.pth"):
        load_checkpoint(path, _training_state(tiny_model()), "cpu")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_model_weights(tmp_path / "broken.pth", tiny_model(), use_ema=False, device="cpu")


def test_load_model_weights_raw_or_ema(tmp_path):
    state = _training_state(tiny_model(seed=1))
    _one_step(state)
    with torch.no_grad():
        for s in state["ema"].shadow_params:
            s.fill_(0.5)
    path = tmp_path / "checkpoint_1.pth"
    save_checkpoint(path, state)

    raw = tiny_model(seed=2)
    assert load_model_weights(path, raw, use_ema=False, device="cpu") == 1
    torch.testing.assert_close(raw.all_modules[2].weight, state["model"].all_modules[2].weight)
    averaged = tiny_model(seed=2)
    load_model_weights(path, averaged, use_ema=True, device="cpu")
    assert all(torch.all(p == 0.5) for p in averaged.parameters())
    torch.testing.assert_close(averaged.sigmas, state["model"].sigmas)

    del state["ema"]
    save_checkpoint(path, state)
    with pytest.raises(ValueError, match="sampling.use_ema=False"):
        load_model_weights(path, tiny_model(), use_ema=True, device="cpu")


def test_export_writes_the_ema_in_half_precision_and_loads(tmp_path):
    from configs.tiny import get_config
    from runners.build import create_model
    from models.ema import ExponentialMovingAverage
    from runners.export import export
    from utils.checkpoints import load_model_weights, save_checkpoint
    config = get_config()
    model = create_model(config)
    ema = ExponentialMovingAverage(model.parameters(), 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # raw weights differ from the EMA
    save_checkpoint(tmp_path / "full.pth", {"model": model, "ema": ema, "step": 9, "config": checkpoint_record(config),
                                            "optimizer": torch.optim.Adam(model.parameters())})
    export(str(tmp_path / "full.pth"), str(tmp_path / "small.pth"))
    small = torch.load(tmp_path / "small.pth", weights_only=True)
    assert set(small) == {"model", "step", "config", "weights", "weights_sha256"} and small["weights"] == "ema"
    assert all(v.dtype == torch.float16 for v in small["model"].values() if v.is_floating_point())
    for use_ema in (True, False):
        fresh = create_model(config)
        assert load_model_weights(str(tmp_path / "small.pth"), fresh, use_ema=use_ema, device="cpu") == 9
        for a, b in zip(fresh.parameters(), ema.shadow_params):
            assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-3, rtol=1e-3)
    export(str(tmp_path / "full.pth"), str(tmp_path / "raw.pth"), ema=False)
    fresh = create_model(config)
    load_model_weights(str(tmp_path / "raw.pth"), fresh, use_ema=False, device="cpu")
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-3)
