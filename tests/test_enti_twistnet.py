"""Tests for entitwist.models.enti_twistnet: the whole tiny network, ablations, checkpoints,
bad inputs and degenerate entity maps."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitwist.errors import CheckpointError, InputError
from entitwist.models import inputs as model_inputs
from entitwist.models.enti_twistnet import EntiTwistNet
from entitwist.models.registry import create_model

S = 64  # input side for the tests (stage maps 16, 8, 4, 2)


@pytest.fixture(scope="module")
def model() -> EntiTwistNet:
    torch.manual_seed(0)
    return create_model("entitwist_tiny").eval()


def _inputs(model: EntiTwistNet, b: int = 2, size: int = S, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, size, size, generator=g)
    text = model.tokenizer(
        ["the storage tank at the top right", "a small white car on the road"][:b] * (b // 2 or 1)
    )
    entities = torch.randint(0, k + 1, (b, size, size), generator=g)
    return image, text["input_ids"][:b], text["attention_mask"][:b], entities


def test_forward_shapes_intermediates_and_finite(model: EntiTwistNet) -> None:
    image, ids, mask, ent = _inputs(model)
    with torch.no_grad():
        out = model(image, ids, mask, ent, return_intermediates=True)
        logits = model(image, ids, mask, ent)
    assert logits.shape == (2, 2, S, S) and torch.isfinite(logits).all()
    torch.testing.assert_close(out["logits"], logits)
    dims = model.config.visual.stage_dims
    assert len(out["stages"]) == 4
    for t, stage in enumerate(out["stages"]):
        side = S // 2 ** (t + 2)
        assert stage["f_in"].shape == (2, dims[t], side, side)
        assert stage["f_out"].shape == (2, dims[t], side, side)
        assert stage["cube"].shape == stage["sem"].shape == (2, 2 * dims[t], side, side)


def test_early_fusion_feeds_the_next_stage(model: EntiTwistNet) -> None:
    """Stage t+1 runs on F^in_t + F^out_t: recompute stage 2 from stage 1's outputs."""
    image, ids, mask, ent = _inputs(model)
    with torch.no_grad():
        out = model(image, ids, mask, ent, return_intermediates=True)
        s0 = out["stages"][0]
        x = (s0["f_in"] + s0["f_out"]).permute(0, 2, 3, 1)
        f_in_1 = model.visual.stage(1, x).permute(0, 3, 1, 2)
    torch.testing.assert_close(f_in_1, out["stages"][1]["f_in"])


def test_backward_reaches_every_part() -> None:
    torch.manual_seed(0)
    m = create_model("entitwist_tiny").train()
    image, ids, mask, ent = _inputs(m)
    from entitwist.models.loss import referring_loss

    target = (ent == 1).long()
    loss = referring_loss(m(image, ids, mask, ent), target)
    loss.backward()
    assert torch.isfinite(loss)
    for part in ("visual", "text", "fusions", "decoder"):
        grads = [p.grad for p in getattr(m, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    seg_reason = m.fusions[0].seg.reason.weight.grad
    assert seg_reason is not None and seg_reason.abs().sum() > 0


def test_text_changes_the_logits(model: EntiTwistNet) -> None:
    image, _, _, ent = _inputs(model, b=1)
    a = model.tokenizer("the storage tank at the top right")
    b = model.tokenizer("a small white car on the road")
    with torch.no_grad():
        la = model(image, a["input_ids"], a["attention_mask"], ent)
        lb = model(image, b["input_ids"], b["attention_mask"], ent)
    assert (la - lb).abs().max() > 1e-4


def test_entities_change_the_logits_only_when_seg_is_on(model: EntiTwistNet) -> None:
    image, ids, mask, ent = _inputs(model, b=1)
    with torch.no_grad():
        with_e = model(image, ids, mask, ent)
        without = model(image, ids, mask, None)
        zero_e = model(image, ids, mask, torch.zeros_like(ent))
    assert (with_e - without).abs().max() > 1e-4
    torch.testing.assert_close(without, zero_e)  # None means "no entities": G = 0
    torch.manual_seed(0)
    off = create_model("entitwist_tiny", seg=False, decoder__entity_head_layers=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(off(image, ids, mask, ent), off(image, ids, mask, None))
    # the entity head (an extension, on in the tiny models) reads the entities even without SEG
    torch.manual_seed(0)
    head_only = create_model("entitwist_tiny", seg=False).eval()
    with torch.no_grad():
        diff = head_only(image, ids, mask, ent) - head_only(image, ids, mask, None)
    assert diff.abs().max() > 1e-4


ABLATIONS = [
    {"seg": False},
    {"self_reasoning": False},
    *({"dat": d} for d in ("sp_sa", "sa_sp", "parallel", "sp", "sa", "none")),
    {"seg": False, "dat": "none"},
    *({"propagation": p} for p in ("mamba", "self_attention", "none")),
    {"spatial": "mamba"},
    {"max_entities": 1},
    {"max_entities": 255},
    {"attn_kv_stride": (1, 1, 1, 1)},
    {"decoder__head_layers": 2},
]


@pytest.mark.parametrize(
    "overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_every_ablation_builds_and_runs(overrides) -> None:
    torch.manual_seed(0)
    m = create_model("entitwist_tiny", **overrides).train()
    k = min(3, m.config.fusion.max_entities)
    image, ids, mask, ent = _inputs(m, b=2, size=32 * 2, k=k)
    logits = m(image, ids, mask, ent if m.config.fusion.seg else None)
    assert logits.shape == (2, 2, 64, 64) and torch.isfinite(logits).all()
    logits.mean().backward()


def test_save_and_load_round_trip(tmp_path, model: EntiTwistNet) -> None:
    image, ids, mask, ent = _inputs(model)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer"}
    saved = json.loads((folder / "config.json").read_text())
    assert saved["name"] == "entitwist_tiny" and saved["text"]["hf_config"]["hidden_size"] == 32
    again = EntiTwistNet.from_pretrained(folder)
    assert not again.training
    with torch.no_grad():
        torch.testing.assert_close(
            again(image, ids, mask, ent), model(image, ids, mask, ent), rtol=0, atol=0
        )
    sentence = "the largest building at the bottom left"
    assert torch.equal(
        again.tokenizer(sentence)["input_ids"], model.tokenizer(sentence)["input_ids"]
    )
    assert again.config == model.config


def test_minilm_checkpoint_reloads_without_the_source_directory(tmp_path) -> None:
    torch.manual_seed(0)
    m = create_model("entitwist_tiny_minilm").eval()
    m.save_pretrained(tmp_path / "ckpt")
    data = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    data["text"]["pretrained"] = str(tmp_path / "moved-away")  # the source is gone
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(data))
    again = EntiTwistNet.from_pretrained(tmp_path / "ckpt")
    image, _, _, ent = _inputs(m, b=1)
    t = again.tokenizer("the storage tank")
    assert t["input_ids"][0, :3].tolist() == [101, 1996, 5527]
    with torch.no_grad():
        torch.testing.assert_close(
            again(image, t["input_ids"], t["attention_mask"], ent),
            m(image, t["input_ids"], t["attention_mask"], ent),
            rtol=0,
            atol=0,
        )


def test_bad_checkpoints(tmp_path, model: EntiTwistNet) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        EntiTwistNet.from_pretrained(tmp_path / "nothing")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(model.state_dict(), pickled / "model.pt")
    with pytest.raises(CheckpointError, match="pickled"):
        EntiTwistNet.from_pretrained(pickled)
    good = tmp_path / "good"
    model.save_pretrained(good)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((good / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        EntiTwistNet.from_pretrained(broken)
    (broken / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        EntiTwistNet.from_pretrained(broken)
    data = json.loads((good / "config.json").read_text())
    data["decoder"]["width"] = 48
    (broken / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not match"):
        EntiTwistNet.from_pretrained(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        EntiTwistNet.from_pretrained(broken)


def test_bad_inputs_raise_one_line_errors(model: EntiTwistNet) -> None:
    image, ids, mask, ent = _inputs(model)
    cases = [
        ((image[0], ids, mask, ent), "B, 3, H, W"),
        ((image[:, :1], ids, mask, ent), "B, 3, H, W"),
        ((image.to(torch.uint8), ids, mask, ent), "float"),
        ((torch.randn(2, 3, 60, 64), ids, mask, ent[:, :60]), "multiple of 32"),
        ((image, ids[:1], mask[:1], ent), "input_ids"),
        ((image, ids.float(), mask, ent), "integers"),
        ((image, ids, mask[:, :10], ent), "differ"),
        ((image, ids, torch.zeros_like(mask), ent), "empty text"),
        ((image, ids + 10_000, mask, ent), "token ids"),
        ((image, ids, mask, ent[:, :32]), "does not match the image"),
        ((image, ids, mask, ent.float()), "integer labels"),
        ((image, ids, mask, ent[0]), r"\(B, H, W\)"),
        ((image, ids, mask, ent + 100), "0..K=40"),
        ((image, ids, mask, ent - 1), "0..K=40"),
    ]
    values = {"empty text", "token ids", "0..K=40"}  # checked by check_inputs, not forward
    for args, match in cases:
        with pytest.raises(InputError, match=match) as info:
            model.check_inputs(*args)
        assert "\n" not in str(info.value), match
        if match not in values:  # shapes and types: forward checks them too (no sync)
            with pytest.raises(InputError, match=match):
                model(*args)
    model.check_inputs(image, ids, mask, ent)  # good inputs pass


def test_long_text_is_truncated_with_one_warning(model: EntiTwistNet) -> None:
    model_inputs._TEXT_TRUNCATION_WARNED = False
    image, ids, mask, ent = _inputs(model)
    long_ids = torch.cat([ids, ids[:, 1:6]], dim=1)  # 25 tokens
    long_mask = torch.cat([mask, torch.ones_like(mask[:, :5])], dim=1)
    with torch.no_grad():
        with pytest.warns(UserWarning, match="max_tokens=20"):
            out = model(image, long_ids, long_mask, ent)
        torch.testing.assert_close(out, model(image, long_ids[:, :20], long_mask[:, :20], ent))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(image, long_ids, long_mask, ent)


@st.composite
def degenerate_maps(draw):
    kind = draw(
        st.sampled_from(
            ["empty", "all_one", "single_pixel", "max_label", "stripes", "random", "tiny_blobs"]
        )
    )
    k = draw(st.integers(1, 40))
    m = torch.zeros(S, S, dtype=torch.long)
    if kind == "all_one":
        m[:] = 1
    elif kind == "single_pixel":
        m[draw(st.integers(0, S - 1)), draw(st.integers(0, S - 1))] = k
    elif kind == "max_label":
        m[: S // 2] = 40
    elif kind == "stripes":  # one-pixel stripes vanish as areas shrink at stride 32
        m[:, ::7] = torch.arange(1, S // 7 + 2)[: m[:, ::7].shape[1]].clamp(max=40)
    elif kind == "random":
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        m = torch.randint(0, k + 1, (S, S), generator=g)
    elif kind == "tiny_blobs":
        for i in range(k):
            m[(3 * i) % S, (5 * i) % S] = i + 1
    return m


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entity_map=degenerate_maps(), identical=st.booleans())
def test_degenerate_entity_maps_give_finite_logits(
    model: EntiTwistNet, entity_map, identical
) -> None:
    image, ids, mask, _ = _inputs(model, b=1)
    if identical:  # a flat image: every entity prior is the same vector
        image = torch.zeros_like(image)
    with torch.no_grad():
        logits = model(image, ids, mask, entity_map[None])
    assert torch.isfinite(logits).all()
