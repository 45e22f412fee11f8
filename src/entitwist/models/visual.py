"""Swin visual encoder (timm), run stage by stage.

Enti-TwistNet fuses language and entities *inside* the encoder (early fusion, DESIGN.md
section 2): the fused map of stage t feeds stage t+1. timm's ``SwinTransformer`` keeps its
patch merging at the start of the next stage, so the network calls
:meth:`SwinEncoder.embed` once and then :meth:`SwinEncoder.stage` for t = 0..3, fusing in
between. timm works channels-last (NHWC); this module converts to and from NCHW so that the
rest of the network sees ``(B, C, H, W)``.

Any input side that is a multiple of 32 is accepted: the attention masks are built for the
actual size (timm's ``strict_img_size=False``), and feature maps whose side is not a multiple
of the window (30 and 15 with window 12 at 480) are padded to the window and cropped back,
as timm does.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from entitwist.config import VisualConfig
from entitwist.errors import ConfigError


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous()


def nchw_to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def sincos_position_embedding(
    height: int,
    width: int,
    dim: int,
    reference: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code, (height, width, dim), channels-last.

    Channel blocks of ``dim / 4``: sin(x w_k), cos(x w_k), sin(y w_k), cos(y w_k) with
    w_k = 10000^(-k / (dim / 4)), as in MAE. x and y are cell centres measured in cells of
    the ``reference`` grid (rows, columns; default: this grid), so a grid of another size
    gets the same code at the same *relative* position: "the left edge" reads the same at
    128 and at 480 px.
    """
    if dim % 4:
        raise ConfigError(f"sincos position embedding needs dim divisible by 4, got {dim}")
    ref_h, ref_w = reference if reference is not None else (height, width)
    ys = (torch.arange(height, device=device, dtype=torch.float64) + 0.5) * (ref_h / height)
    xs = (torch.arange(width, device=device, dtype=torch.float64) + 0.5) * (ref_w / width)
    q = dim // 4
    omega = 10000.0 ** (-torch.arange(q, device=device, dtype=torch.float64) / q)  # (q,)
    ax = xs[:, None] * omega  # (W, q)
    ay = ys[:, None] * omega  # (H, q)
    code = torch.cat(
        [
            torch.sin(ax)[None].expand(height, -1, -1),
            torch.cos(ax)[None].expand(height, -1, -1),
            torch.sin(ay)[:, None].expand(-1, width, -1),
            torch.cos(ay)[:, None].expand(-1, width, -1),
        ],
        dim=-1,
    )  # (H, W, dim)
    return code.to(dtype)


def create_swin(config: VisualConfig) -> nn.Module:
    """The timm ``SwinTransformer`` a visual config describes, without head and final norm.

    ``config.pretrained``: ``None`` (random), a local weight file (loaded by timm through
    ``pretrained_cfg_overlay=dict(file=...)``, with timm's key filter, so official timm/
    Microsoft checkpoints load), or ``"hub"`` (timm downloads ``config.name``'s weights;
    needs the network).
    """
    import timm

    kwargs: dict[str, Any] = dict(
        img_size=config.img_size,
        embed_dim=config.embed_dim,
        depths=tuple(config.depths),
        num_heads=tuple(config.num_heads),
        window_size=config.window_size,
        drop_path_rate=config.drop_path_rate,
        strict_img_size=False,
        num_classes=0,
    )
    source = config.pretrained
    try:
        if source is None:
            model = timm.create_model(config.name, pretrained=False, **kwargs)
        elif source == "hub":
            model = timm.create_model(config.name, pretrained=True, **kwargs)
        else:
            path = os.path.expanduser(source)
            if not os.path.isfile(path):
                raise ConfigError(
                    f"visual.pretrained={source!r} is not a file; give a .safetensors/.pth weight file, "
                    "'hub', or None"
                )
            model = timm.create_model(
                config.name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs
            )
    except RuntimeError as exc:
        if source is None:
            raise
        msg = str(exc).splitlines()[0][:200]
        raise ConfigError(
            f"Swin weights {source!r} do not fit visual config {config.name!r} ({msg}); "
            "check embed_dim/depths/window_size"
        ) from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"could not load Swin weights {source!r} ({type(exc).__name__}: no network, or a bad "
            "file?); give a local weight file as visual.pretrained, or None for random weights"
        ) from None
    model.norm = nn.Identity()  # the final norm belongs to the classifier path; unused
    return model


class SwinEncoder(nn.Module):
    """Swin backbone exposed stage by stage.

    Args:
        config: the visual config; or pass ``swin`` to wrap an already built timm model.

    Shapes (input H x W, stage t = 0..3, d_t = embed_dim * 2**t, s_t = 4 * 2**t):
        ``embed(image (B,3,H,W)) -> (B, H/4, W/4, d_0)`` NHWC (plus the fixed position
        code when ``config.position_embedding == "sincos"``);
        ``stage(t, x NHWC) -> (B, H/s_t, W/s_t, d_t)`` NHWC (patch merging first for t > 0);
        ``forward(image) -> [ (B, d_t, H/s_t, W/s_t) ]`` NCHW, plain (unfused) features.
    """

    def __init__(
        self, config: VisualConfig | None = None, *, swin: nn.Module | None = None
    ) -> None:
        super().__init__()
        if swin is None:
            if config is None:
                raise ConfigError("SwinEncoder needs a VisualConfig or a timm Swin model")
            swin = create_swin(config)
        self.patch_embed = swin.patch_embed
        self.layers: nn.Sequential = swin.layers  # type: ignore[assignment]
        self.stage_dims = tuple(int(info["num_chs"]) for info in swin.feature_info)
        self.reductions = tuple(int(info["reduction"]) for info in swin.feature_info)
        self.position_embedding = config.position_embedding if config is not None else "none"
        cells = (config.img_size if config is not None else 0) // self.reductions[0]
        self._reference = (cells, cells)  # the grid the code is defined on
        self._codes: dict[tuple, torch.Tensor] = {}  # (h, w, device, dtype) -> code

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image)  # (B, H/4, W/4, d_0)
        if self.position_embedding == "sincos":
            x = x + self.position_code(x.shape[1], x.shape[2], x.device, x.dtype)
        return x

    def position_code(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The ``sincos`` code (height, width, d_0) of a patch grid, cached per size."""
        key = (height, width, device, dtype)
        if key not in self._codes:
            self._codes[key] = sincos_position_embedding(
                height, width, self.stage_dims[0], self._reference, device, dtype
            )
        return self._codes[key]

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.layers[index](x)  # (B, h_t, w_t, d_t)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(image)
        features = []
        for t in range(self.num_stages):
            x = self.stage(t, x)
            features.append(nhwc_to_nchw(x))
        return features
