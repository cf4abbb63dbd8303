"""The published recipe's pieces: parameter groups and decays, LR schedule, presets, SWA averaging, loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crystalframer.training.metrics import masked_loss, population_stats, regression_metrics
from crystalframer.training.recipe import (PRESETS, Recipe, build_optimizer, build_scheduler, cosine_factor,
                                           frozen_lr, get_recipe, in_swa_phase, inverse_sqrt_factor, param_groups)
from crystalframer.training.swa import WeightAverager
from tests.training.helpers import tiny_model


def test_param_groups_split_biases_and_keep_official_bias_decay():
    model = tiny_model(frame="max")
    groups = {g["group"]: g for g in param_groups(model, 1e-5, 0.01)}
    assert set(groups) == {"decay", "nodecay"}
    assert all("bias" not in n for n in groups["decay"]["names"])
    assert groups["nodecay"]["names"] and all("bias" in n for n in groups["nodecay"]["names"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups["decay"]["names"]) | set(groups["nodecay"]["names"]) == trainable
    assert not set(groups["decay"]["names"]) & set(groups["nodecay"]["names"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & trainable  # σ-normalisation pairs are frozen and left out

    opt = build_optimizer(model, Recipe())
    by = {g["group"]: g for g in opt.param_groups}
    assert by["decay"]["weight_decay"] == 1e-5
    assert by["nodecay"]["weight_decay"] == 0.01  # AdamW's default, which the official code leaves on biases
    assert by["decay"]["betas"] == (0.9, 0.98) and by["decay"]["lr"] == 5e-4 and by["decay"]["eps"] == 1e-8
    assert build_optimizer(model, Recipe(bias_weight_decay=0.0)).param_groups[1]["weight_decay"] == 0.0


def test_decoupled_decay_is_applied_per_group():
    """With zero gradients an AdamW step only decays: p ← p (1 − lr·wd), with each group's wd."""
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(1.0)
    opt = build_optimizer(lin, Recipe(lr=0.1, weight_decay=1e-5, bias_weight_decay=0.01))
    lin.weight.grad = torch.zeros_like(lin.weight)
    lin.bias.grad = torch.zeros_like(lin.bias)
    opt.step()
    assert torch.allclose(lin.weight, torch.full_like(lin.weight, 1 - 0.1 * 1e-5))
    assert torch.allclose(lin.bias, torch.full_like(lin.bias, 1 - 0.1 * 0.01))


def test_inverse_sqrt_schedule_factor():
    assert inverse_sqrt_factor(0) == 1.0
    assert math.isclose(inverse_sqrt_factor(4000), math.sqrt(0.5))
    assert math.isclose(inverse_sqrt_factor(12000), 0.5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=5e-4)
    sch = build_scheduler(opt, Recipe())
    assert opt.param_groups[0]["lr"] == 5e-4  # the first step uses the full LR (no warm-up)
    opt.step()  # (no gradient: nothing moves) keeps torch's step-order check quiet
    for _ in range(4000):
        sch.step()
    assert math.isclose(opt.param_groups[0]["lr"], 5e-4 * math.sqrt(0.5), rel_tol=1e-12)
    # The JARVIS preset freezes the LR at 5e-4·√(4000/(4000 + 1950·174)) ≈ 5.4e-5 (spec §7).
    assert math.isclose(frozen_lr(PRESETS["jarvis"], 174), 5e-4 * math.sqrt(4000 / (4000 + 1950 * 174)))
    assert abs(frozen_lr(PRESETS["jarvis"], 174) - 5.4e-5) < 1e-6


def test_cosine_schedule_factor():
    assert cosine_factor(0, 100, 0.01) == 1.0
    assert math.isclose(cosine_factor(50, 100, 0.0), 0.5)
    assert math.isclose(cosine_factor(25, 100, 0.0), 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_factor(100, 100, 0.01) == cosine_factor(500, 100, 0.01) == 0.01
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    recipe = Recipe(epochs=10, swa_epochs=2, schedule="cosine", lr=1e-3, min_lr=1e-5)
    with pytest.raises(ValueError, match="steps per epoch"):
        build_scheduler(opt, recipe)
    sch = build_scheduler(opt, recipe, steps_per_epoch=5)  # 8 pre-SWA epochs x 5 steps = 40
    opt.step()
    for _ in range(40):
        sch.step()
    assert math.isclose(opt.param_groups[0]["lr"], 1e-5, rel_tol=1e-12)
    assert frozen_lr(recipe, 5) == 1e-5


def test_swa_phase_is_the_last_epochs():
    r = Recipe(epochs=10, swa_epochs=3)
    assert [in_swa_phase(e, r) for e in range(10)] == [False] * 7 + [True] * 3
    assert not any(in_swa_phase(e, Recipe(epochs=10, swa_epochs=0)) for e in range(10))


def test_presets_match_the_paper():
    assert (PRESETS["jarvis"].batch_size, PRESETS["jarvis"].epochs, PRESETS["jarvis"].swa_epochs) == (256, 2000, 50)
    assert (PRESETS["mp"].batch_size, PRESETS["mp"].epochs, PRESETS["mp"].swa_epochs) == (128, 800, 50)
    assert (PRESETS["oqmd"].batch_size, PRESETS["oqmd"].epochs, PRESETS["oqmd"].swa_epochs) == (1024, 200, 20)
    for name in ("jarvis", "mp", "oqmd"):
        r = PRESETS[name]
        assert (r.lr, r.betas, r.weight_decay, r.clip_norm, r.loss, r.schedule_warmup) == \
            (5e-4, (0.9, 0.98), 1e-5, 1.0, "l1", 4000.0)
    q = get_recipe("quick", epochs=3, batch_size=None, model={"num_layers": 1})
    assert q.epochs == 3 and q.batch_size == PRESETS["quick"].batch_size and q.model["num_layers"] == 1
    assert q.model["model_dim"] == PRESETS["quick"].model["model_dim"]
    with pytest.raises(ValueError, match="unknown preset"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="unknown recipe settings"):
        get_recipe("mp", learning_rate=1.0)
    with pytest.raises(ValueError, match="swa_epochs"):
        Recipe(epochs=3, swa_epochs=4)


def test_weight_averager_is_the_equal_weight_running_mean():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    avg = WeightAverager(lin)
    snaps = []
    for _ in range(5):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(torch.randn_like(p))
        snaps.append({n: p.detach().clone() for n, p in lin.named_parameters()})
        avg.update(lin)
    out = avg.averaged_model(lin)
    for n, p in out.named_parameters():
        assert torch.allclose(p, torch.stack([s[n] for s in snaps]).mean(0), atol=1e-6)
    # state round trip (used by resume)
    again = WeightAverager(lin)
    again.load_state_dict(avg.state_dict())
    assert again.n_averaged == 5
    for n in again.avg:
        assert torch.equal(again.avg[n], avg.avg[n])


def test_masked_loss_and_population_stats():
    pred = torch.tensor([[0.0, 1.0], [2.0, 5.0], [1.0, -1.0]])
    y = torch.tensor([[1.0, float("nan")], [2.0, 3.0], [0.0, float("nan")]])
    # target 0: mean |.| over 3 = (1+0+1)/3; target 1: only row 1 labelled, |5-3| = 2
    assert math.isclose(float(masked_loss(pred, y)), 2 / 3 + 2.0, rel_tol=1e-6)
    assert math.isclose(float(masked_loss(pred[:, :1], y[:, :1])), float(torch.nn.L1Loss()(pred[:, :1], y[:, :1])))
    mean, std = population_stats(np.array([[1.0, np.nan], [3.0, 5.0]]))
    assert np.allclose(mean, [2.0, 5.0]) and np.allclose(std, [1.0, 1.0])  # ddof 0; constant column → 1
    m = regression_metrics(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [4.0]]), ["t"])["t"]
    assert math.isclose(m["mae"], 1 / 3) and math.isclose(m["rmse"], math.sqrt(1 / 3))
    assert math.isclose(m["r2"], 1 - 1 / 2) and m["n"] == 3
