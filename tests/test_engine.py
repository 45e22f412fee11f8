"""engine.optim (groups, poly schedule) and engine.module (loss checks, checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from entitwist.errors import CheckpointError, ConfigError, DataError
from entitwist.train.checkpoints import load_checkpoint, model_from_checkpoint
from entitwist.train.datamodule import (
    ReferringDataModule,
    ResumableSampler,
    ShardSampler,
    check_data_args,
)
from entitwist.train.export import ExportBestCallback
from entitwist.train.module import EntiTwistModule, NonFiniteLossError
from entitwist.train.optim import build_optimizer, build_poly_scheduler, param_groups, poly_factor


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


FAST = {"img_size": 64, "propagation": "none"}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from entitwist.data.synthetic import write_dataset
    from entitwist.entities.cli import main as entities_main

    root = tmp_path_factory.mktemp("scenes")
    write_dataset(root, 5, size=64, seed=1, expressions_per_scene=2, progress=False)
    assert entities_main([str(root)]) == 0
    return root


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        use_distributed_sampler=False,
        default_root_dir=str(tmp_path),
    )
    args.update(kw)
    return L.Trainer(**args)


class _PoisonAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.ids = list(batch["sample_id"])
            with torch.no_grad():
                next(pl_module.model.decoder.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_with_step_and_ids(scenes, tmp_path):
    L.seed_everything(0)
    module = EntiTwistModule("entitwist_tiny", FAST)
    data = ReferringDataModule.for_module(module, dataset="jsonl", root=str(scenes), batch_size=2)
    poison = _PoisonAt(step=1)
    trainer = _trainer(
        tmp_path, callbacks=[poison], enable_checkpointing=False, limit_val_batches=0
    )
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(module, datamodule=data)
    msg = str(info.value)
    assert "global step 1" in msg and "\n" not in msg
    assert all(sid in msg for sid in poison.ids)
    assert trainer.global_step == 1  # the poisoned step was not applied


def test_checkpoint_round_trip_export_best_and_schedule(scenes, tmp_path):
    L.seed_everything(0)
    module = EntiTwistModule("entitwist_tiny", FAST, lr=1e-3)
    data = ReferringDataModule.for_module(module, dataset="jsonl", root=str(scenes), batch_size=2)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", monitor="val/mIoU", mode="max", save_last=True
    )
    export = ExportBestCallback(str(tmp_path / "export"))
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ckpt, export], limit_train_batches=2)
    trainer.fit(module, datamodule=data)
    # the schedule length equals Lightning's own estimate, and the lr reached 0 at the end
    assert module.total_training_steps() == trainer.estimated_stepping_batches == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    data_ckpt = load_checkpoint(ckpt.best_model_path)
    assert data_ckpt["entitwist_model_config"]["visual"]["img_size"] == 64
    restored = model_from_checkpoint(ckpt.best_model_path)
    best_state = {k[6:]: v for k, v in data_ckpt["state_dict"].items() if k.startswith("model.")}
    for k, v in restored.state_dict().items():
        assert torch.equal(v, best_state[k])

    # the export holds the best-on-validation weights, not the last ones
    from entitwist.models.enti_twistnet import EntiTwistNet

    exported = EntiTwistNet.from_pretrained(tmp_path / "export")
    for k, v in exported.state_dict().items():
        assert torch.equal(v, best_state[k]), k
    info = json.loads((tmp_path / "export" / "training.json").read_text())
    assert info["selected_on"] == "val" and info["checkpoint"] == ckpt.best_model_path
    # the generator of the training maps is recorded in the checkpoint and the export
    manifest = json.loads((scenes / "entities" / "felzenszwalb" / "manifest.json").read_text())
    assert module.model.config.fusion.entity_generator == "felzenszwalb"
    assert data_ckpt["entitwist_model_config"]["fusion"]["entity_generator"] == "felzenszwalb"
    assert exported.config.fusion.entity_generator == "felzenszwalb"
    assert exported.config.fusion.entity_params == manifest["params"]
    assert info["score"] == pytest.approx(float(ckpt.best_model_score))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ENTITWIST_EVIL_MARKER']}",))


def test_load_checkpoint_refuses_pickled_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ENTITWIST_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and not marker.exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_resumable_sampler_skip_and_shards():
    data = list(range(10))
    a = ResumableSampler(data, seed=3)
    a.set_epoch(2)
    full = list(a)
    b = ResumableSampler(data, seed=3)
    b.set_epoch(2)
    b.skip_next(4)
    assert list(b) == full[4:] and len(b) == 10
    assert list(b) == full  # the skip applies to one iteration only
    a.set_epoch(3)
    assert sorted(a) == data and list(a) != full  # a new permutation per epoch
    shards = [list(ShardSampler(data, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == data  # every sample once, no padding
    assert [len(ShardSampler(data, num_replicas=3, rank=r)) for r in range(3)] == [4, 3, 3]


def test_datamodule_takes_the_models_entity_needs():
    # the full resolver is tested in test_resolve.py; here: for_module passes what it needs
    module = EntiTwistModule(
        "entitwist_tiny", {**FAST, "fusion__entity_generator": "felzenszwalb-rag"}
    )
    data = ReferringDataModule.for_module(module, dataset="jsonl", root=".")
    spec = data.entity_spec()
    assert (spec.generator, spec.max_entities, data.needs_entities) == (
        "felzenszwalb-rag",
        40,
        True,
    )
    off = EntiTwistModule("entitwist_tiny", {**FAST, "seg": False, "entity_head_layers": 0})
    assert ReferringDataModule.for_module(off, dataset="jsonl", root=".").entity_spec() is None


@pytest.mark.parametrize("total,warmup", [(20, 5), (12, 1), (8, 8)])
def test_poly_schedule_with_warmup(total, warmup):
    model = _Tiny()
    opt = build_optimizer(model, lr=2e-3)
    sched = build_poly_scheduler(opt, total_steps=total, power=0.9, warmup_steps=warmup)
    seen = []
    for _ in range(total + 1):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # linear rise to the base lr over the warm-up, then the poly decay over what is left
    for k in range(warmup):
        assert seen[k] == pytest.approx(2e-3 * (k + 1) / warmup)
    span = max(1, total - warmup)
    for k in range(warmup, total + 1):
        want = 0.0 if k >= total else 2e-3 * (1 - (k - warmup) / span) ** 0.9
        assert seen[k] == pytest.approx(want, abs=1e-15)
    assert max(seen) == pytest.approx(2e-3) and seen[-1] == 0.0
    assert poly_factor(3, 10, 0.9, 0) == poly_factor(3, 10, 0.9)  # no warm-up: the paper's


def test_module_loss_weights_and_warmup_settings():
    from entitwist.models.loss import referring_loss

    logits = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.7).long()
    paper = referring_loss(logits, target)
    heavy = referring_loss(logits, target, dice_weight=1.0)
    assert heavy > paper  # the Dice term is positive and now weighs ten times more
    module = EntiTwistModule(
        "entitwist_tiny", model_overrides=FAST, dice_weight=1.0, warmup_steps=7
    )
    assert module.dice_weight == 1.0 and module.warmup_steps == 7
    assert module.hparams["dice_weight"] == 1.0  # saved in checkpoints with the rest
    with pytest.raises(ConfigError, match="warmup_steps=-1"):
        EntiTwistModule("entitwist_tiny", model_overrides=FAST, warmup_steps=-1)
    with pytest.raises(ConfigError, match="dice_weight=-0.5"):
        EntiTwistModule("entitwist_tiny", model_overrides=FAST, dice_weight=-0.5)


def test_bad_data_settings_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_data_args(dataset="jsonl", root=tmp_path / "nope")
    with pytest.raises(ConfigError, match="batch size 0"):
        check_data_args(dataset="jsonl", root=tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="max_entities=300"):
        check_data_args(dataset="jsonl", root=tmp_path, max_entities=300)
    with pytest.raises(ConfigError, match="unknown dataset"):
        check_data_args(dataset="coco", root=tmp_path)
    with pytest.raises(ConfigError, match="unknown model"):
        EntiTwistModule("entitwist_huge")


def test_train_api_fits_and_tests_on_the_best_checkpoint(scenes, tmp_path):
    from entitwist.train import train

    result = train(
        {
            "model": {"model_name": "entitwist_tiny", "model_overrides": FAST},
            "data": {"dataset": "jsonl", "root": str(scenes), "batch_size": 2},
            "trainer": {
                "max_epochs": 1,
                "limit_train_batches": 2,
                "accelerator": "cpu",
                "logger": False,
                "enable_progress_bar": False,
                "default_root_dir": str(tmp_path),
            },
        }
    )
    assert Path(result["best_checkpoint"]).is_file() and Path(result["last_checkpoint"]).is_file()
    assert (Path(result["export"]) / "model.safetensors").is_file()
    assert set(result["test"]) == {"lavt", "original"} and set(result["val"]) == {
        "lavt",
        "original",
    }
    assert 0 <= result["test"]["lavt"]["mIoU"] <= 100
    with pytest.raises(DataError, match="does not exist"):
        train({"data": {"root": str(tmp_path / "missing")}})


def test_frozen_text_encoder_is_cached_and_stays_in_eval_mode():
    module = EntiTwistModule("entitwist_tiny", model_overrides=FAST)
    tok = module.tokenizer(["the red car", "all the tanks", "the red car"])
    batch = {
        "image": torch.randn(3, 3, 64, 64),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
        "entities": torch.randint(0, 5, (3, 64, 64)),
    }
    module.eval()
    trained = module(batch)
    assert module._text_cache is None  # a trainable encoder is never cached
    for p in module.model.text.parameters():
        p.requires_grad_(False)
    module.train()
    assert module.training and not module.model.text.training  # frozen: no text dropout
    module.eval()
    cached = module(batch)
    cache = module._text_cache[1]
    assert cache.misses == 3 and len(cache) == 2
    torch.testing.assert_close(cached, trained)  # the same logits as the encoder itself gives
    module(batch)
    assert cache.hits == 3 and cache.misses == 3


def test_validation_loss_uses_the_configured_dice_weight():
    from entitwist.models.loss import referring_loss

    torch.manual_seed(0)
    module = EntiTwistModule("entitwist_tiny", FAST, dice_weight=1.0).eval()
    tok = module.tokenizer(["the red car", "a tank"])
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 10:30, 20:40] = 1
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
        "entities": torch.randint(0, 5, (2, 64, 64)),
        "mask": mask,
    }
    logged = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, value)
    with torch.no_grad():
        module.validation_step(batch, 0)
        logits = module(batch)
    want = referring_loss(logits, mask, dice_weight=1.0)
    assert float(logged["val/loss"]) == pytest.approx(float(want), rel=1e-6)
    assert float(want) != pytest.approx(float(referring_loss(logits, mask)), rel=1e-3)
    # SEG on and a batch without entity maps: an error, never a silent G = 0
    with pytest.raises(DataError, match="carries no entity maps"):
        module({k: v for k, v in batch.items() if k != "entities"})


def test_decoder_batchnorm_is_synchronised_under_gpu_ddp_only():
    from types import SimpleNamespace

    def bn_types(module):
        return {
            type(m).__name__
            for m in module.model.decoder.modules()
            if "BatchNorm" in type(m).__name__
        }

    for world, device, want in (
        (2, "cuda", "SyncBatchNorm"),
        (2, "cpu", "BatchNorm2d"),
        (1, "cuda", "BatchNorm2d"),
    ):
        module = EntiTwistModule("entitwist_tiny", FAST)
        strategy = SimpleNamespace(root_device=torch.device(device))
        module._trainer = SimpleNamespace(world_size=world, strategy=strategy)
        before = {k: v.clone() for k, v in module.model.decoder.state_dict().items()}
        module.setup("fit")
        assert bn_types(module) == {want}, (world, device)
        after = module.model.decoder.state_dict()  # same parameters and buffers
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
