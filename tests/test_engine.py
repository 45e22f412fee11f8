"""engine.optim (groups, poly schedule) and engine.module (loss checks, checkpoints)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from entitwist.engine.optim import build_optimizer, build_poly_scheduler, param_groups, poly_factor


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.A_log = nn.Parameter(torch.zeros(4, 8))
        self.D = nn.Parameter(torch.ones(4))
        self.flagged = nn.Parameter(torch.zeros(3, 3))
        self.flagged._no_weight_decay = True
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, 4))
        self.block = _Block()
        self.head = nn.Linear(4, 2, bias=False)
        self.custom = nn.Parameter(torch.zeros(2, 2))

    def no_weight_decay(self) -> set[str]:  # timm's convention
        return {"custom"}


def test_param_groups_split():
    decay, no_decay = param_groups(_Tiny(), weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert sorted(decay["names"]) == ["block.conv.weight", "block.proj.weight", "head.weight"]
    assert sorted(no_decay["names"]) == sorted(
        [
            "absolute_pos_embed",
            "custom",
            "block.proj.bias",
            "block.norm.weight",
            "block.norm.bias",
            "block.conv.bias",
            "block.bn.weight",
            "block.bn.bias",
            "block.relative_position_bias_table",
            "block.A_log",
            "block.D",
            "block.flagged",
        ]
    )
    # every trainable parameter lands in exactly one group, frozen ones in none
    model = _Tiny()
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("total,power", [(10, 0.9), (7, 1.0), (50, 2.0)])
def test_poly_schedule_follows_formula(total, power):
    model = _Tiny()
    opt = build_optimizer(model, lr=5e-4, weight_decay=0.01)
    sched = build_poly_scheduler(opt, total_steps=total, power=power)
    for k in range(total + 2):
        want = 5e-4 * max(0.0, 1 - k / total) ** power
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()
    assert poly_factor(total, total) == 0.0
    # weight decay applies to the decay group only: a zero-gradient step shrinks only those
    model = _Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert model.head.weight[0, 0].item() == pytest.approx(1 - 0.1 * 0.5)
    assert model.block.A_log[0, 0].item() == 1.0 and model.block.norm.weight[0].item() == 1.0
