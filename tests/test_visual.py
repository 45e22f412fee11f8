"""Tests for entitwist.models.visual: Swin run stage by stage (timm), weights from a file."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from entitwist.config import VisualConfig
from entitwist.errors import ConfigError
from entitwist.models.visual import SwinEncoder, create_swin, nchw_to_nhwc, nhwc_to_nchw

# Swin-B's geometry at 480 (window 12 over 120, 60, 30, 15 cells), but narrow and shallow.
NARROW_480 = VisualConfig(
    name="swin_base_patch4_window12_384",
    img_size=480,
    embed_dim=16,
    depths=(1, 1, 1, 2),
    num_heads=(1, 2, 4, 8),
    window_size=12,
    drop_path_rate=0.0,
)
TINY = VisualConfig(
    name="swin_tiny_patch4_window7_224",
    img_size=128,
    embed_dim=16,
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 4, 8),
    window_size=4,
    drop_path_rate=0.0,
)


def test_stage_by_stage_matches_timm_at_480_window_12() -> None:
    torch.manual_seed(0)
    swin = create_swin(NARROW_480).eval()
    enc = SwinEncoder(swin=swin)
    x = torch.randn(1, 3, 480, 480)
    with torch.no_grad():
        ours = enc(x)
        ref = swin.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape) for f in ours] == [
        (1, 16, 120, 120),
        (1, 32, 60, 60),
        (1, 64, 30, 30),
        (1, 128, 15, 15),
    ]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # 30 and 15 are not multiples of 12: timm pads to the window and crops (shift 6 kept)
    last = swin.layers[3].blocks[1]  # the odd block of the 15x15 stage
    assert tuple(last.window_size) == (12, 12) and tuple(last.shift_size) == (6, 6)
    assert enc.stage_dims == (16, 32, 64, 128) and enc.reductions == (4, 8, 16, 32)


def test_any_multiple_of_32_runs() -> None:
    enc = SwinEncoder(TINY).eval()
    with torch.no_grad():
        feats = enc(torch.randn(2, 3, 96, 160))
    assert [tuple(f.shape[-2:]) for f in feats] == [(24, 40), (12, 20), (6, 10), (3, 5)]


def test_embed_and_stage_are_nhwc() -> None:
    enc = SwinEncoder(TINY).eval()
    x = enc.embed(torch.randn(1, 3, 128, 128))
    assert tuple(x.shape) == (1, 32, 32, 16)
    y = enc.stage(1, enc.stage(0, x))
    assert tuple(y.shape) == (1, 16, 16, 32)
    z = torch.randn(2, 5, 3, 7)
    torch.testing.assert_close(nchw_to_nhwc(nhwc_to_nchw(z)), z)


@pytest.mark.parametrize("with_head", [False, True])
def test_weights_load_from_a_local_safetensors_file(tmp_path, with_head: bool) -> None:
    torch.manual_seed(1)
    source = timm.create_model(
        TINY.name,
        pretrained=False,
        img_size=TINY.img_size,
        embed_dim=TINY.embed_dim,
        depths=TINY.depths,
        num_heads=TINY.num_heads,
        window_size=TINY.window_size,
        num_classes=7 if with_head else 0,
    )
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / "swin.safetensors"
    save_file(state, str(path))
    config = VisualConfig(**{**TINY.__dict__, "pretrained": str(path)})
    loaded = create_swin(config).state_dict()
    fresh = create_swin(TINY).state_dict()
    compared = 0
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        compared += 1
    assert compared > 20
    # and random init really differs, so the comparison means something
    key = "layers.0.blocks.0.attn.qkv.weight"
    assert not torch.equal(fresh[key], loaded[key])


def test_bad_weight_sources_raise_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        create_swin(
            VisualConfig(**{**TINY.__dict__, "pretrained": str(tmp_path / "missing.safetensors")})
        )
    other = timm.create_model(
        TINY.name,
        pretrained=False,
        img_size=128,
        embed_dim=24,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        num_classes=0,
    )
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match="do not fit"):
        create_swin(VisualConfig(**{**TINY.__dict__, "pretrained": str(path)}))


def test_sincos_position_code_follows_its_formula() -> None:
    from entitwist.models.visual import sincos_position_embedding

    code = sincos_position_embedding(4, 6, 8)  # (H, W, d), d/4 = 2 frequencies: 1, 1/100
    assert code.shape == (4, 6, 8) and code.dtype == torch.float32
    y, x = 2, 5
    cx, cy = x + 0.5, y + 0.5
    expected = [
        *[torch.sin(torch.tensor(cx * w)) for w in (1.0, 0.01)],
        *[torch.cos(torch.tensor(cx * w)) for w in (1.0, 0.01)],
        *[torch.sin(torch.tensor(cy * w)) for w in (1.0, 0.01)],
        *[torch.cos(torch.tensor(cy * w)) for w in (1.0, 0.01)],
    ]
    torch.testing.assert_close(code[y, x], torch.stack(expected), atol=1e-6, rtol=0)
    assert len({tuple(v.tolist()) for v in code.reshape(-1, 8)}) == 24  # every cell distinct
    # on a finer grid, positions are measured in cells of the reference grid
    fine = sincos_position_embedding(8, 12, 8, reference=(4, 6))
    torch.testing.assert_close(fine[3, 7, 0], torch.sin(torch.tensor(7.5 / 2)))
    torch.testing.assert_close(fine[3, 7, 4], torch.sin(torch.tensor(3.5 / 2)))
    centre = sincos_position_embedding(1, 1, 8, reference=(4, 6))[0, 0]
    torch.testing.assert_close(centre[0], torch.sin(torch.tensor(3.0)))  # x = 6 / 2
    torch.testing.assert_close(centre[4], torch.sin(torch.tensor(2.0)))  # y = 4 / 2
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_position_embedding(4, 4, 6)


def test_sincos_option_breaks_translation_equivariance_without_weights() -> None:
    from dataclasses import replace

    torch.manual_seed(0)
    plain = SwinEncoder(TINY).eval()
    torch.manual_seed(0)
    coded = SwinEncoder(replace(TINY, position_embedding="sincos")).eval()
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in coded.parameters())
    assert coded.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay compatible
    image = torch.zeros(1, 3, 128, 128)
    image[:, :, 40:56, 8:24] = 1.0  # a bright square on the left...
    mirrored = image.flip(-1)  # ...and on the right
    with torch.no_grad():
        e_plain, m_plain = plain.embed(image), plain.embed(mirrored)
        e_coded, m_coded = coded.embed(image), coded.embed(mirrored)
        # without the code, the patch embedding of the mirrored image is the mirror image
        torch.testing.assert_close(m_plain, e_plain.flip(2))
        assert not torch.allclose(m_coded, e_coded.flip(2), atol=1e-3)
        torch.testing.assert_close(
            e_coded - e_plain,
            coded.position_code(32, 32, image.device, image.dtype)[None].expand_as(e_coded),
        )
        # any multiple of 32 still runs, and the code is cached per grid
        assert coded(torch.rand(1, 3, 96, 160))[0].shape == (1, 16, 24, 40)
        assert (24, 40, torch.device("cpu"), torch.float32) in coded._codes
