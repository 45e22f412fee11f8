"""Text encoders (transformers) and the tokenizer that feeds them.

The paper encodes the expression E into T^ori (N x d_t) with BERT; its "CLIP" rows use a
CLIP text tower instead. Both are built here from a :class:`entitwist.config.TextConfig`:

- ``pretrained`` a local directory or hub id -> weights through ``from_pretrained``
  (a hub id needs the network or the local cache);
- ``pretrained`` None -> random weights from ``hf_config`` (tests, tiny variants, and
  checkpoints whose own weights are loaded afterwards).

The tokenizer that feeds them is :mod:`entitwist.models.tokenizer`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from entitwist.config import TextConfig
from entitwist.errors import ConfigError
from entitwist.models.tokenizer import hub_failure, is_local_source


# ---------------------------------------------------------------------------- encoders
def _hf_config(kind: str, data: dict[str, Any]) -> Any:
    data = {k: v for k, v in data.items() if k not in ("transformers_version", "architectures")}
    if kind == "clip":
        from transformers import CLIPConfig, CLIPTextConfig

        if data.get("model_type") == "clip":  # a whole CLIP config: take its text part
            return CLIPConfig.from_dict(data).text_config
        return CLIPTextConfig.from_dict(data)
    from transformers import BertConfig

    return BertConfig.from_dict(data)


def _compact(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Drop the bookkeeping keys of a transformers config dict (json-friendly)."""
    skip = {
        "transformers_version",
        "id2label",
        "label2id",
        "_name_or_path",
        "architectures",
        "dtype",
    }
    return {k: v for k, v in config_dict.items() if k not in skip}


class TextEncoder(nn.Module):
    """The expression encoder: token ids -> T^ori.

    Args:
        config: the text config. When the encoder is loaded from ``config.pretrained``,
            ``config.hf_config`` is filled in so that a saved checkpoint rebuilds offline.

    ``forward(input_ids (B, N) long, attention_mask (B, N) long) -> (t_ori (B, N, d_t),
    mask (B, N) long)``: the last hidden states (no pooling, no projection) and the mask.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.kind = config.kind
        if config.kind not in ("bert", "clip"):
            raise ConfigError(f"text.kind={config.kind!r} is unknown; use bert or clip")
        if config.pretrained is not None:
            self.model = self._load(config)
            config.hf_config = _compact(self.model.config.to_dict())
        else:
            if not config.hf_config:
                raise ConfigError(
                    "text.pretrained is None but text.hf_config is empty; give a transformers config "
                    "dict or a pretrained directory"
                )
            hf = _hf_config(config.kind, config.hf_config)
            if config.kind == "clip":
                from transformers import CLIPTextModel

                self.model = CLIPTextModel(hf)
            else:
                from transformers import BertModel

                self.model = BertModel(hf, add_pooling_layer=False)
        self.hidden_size = int(self.model.config.hidden_size)  # type: ignore[arg-type]
        self.max_positions = int(self.model.config.max_position_embeddings)  # type: ignore[arg-type]
        if config.max_tokens > self.max_positions:
            raise ConfigError(
                f"text.max_tokens={config.max_tokens} exceeds the encoder's {self.max_positions} "
                "positions; lower max_tokens"
            )

    @staticmethod
    def _load(config: TextConfig) -> nn.Module:
        source = os.path.expanduser(str(config.pretrained))
        local = is_local_source(source)
        try:
            if config.kind == "clip":
                from transformers import CLIPTextModel

                return CLIPTextModel.from_pretrained(source)
            from transformers import BertModel

            return BertModel.from_pretrained(source, add_pooling_layer=False)
        except (OSError, ValueError) as exc:
            if local:
                raise ConfigError(
                    f"text encoder directory {source!r} could not be loaded ({type(exc).__name__}); "
                    "it must hold config.json and model weights"
                ) from None
            raise hub_failure("text encoder", source, exc) from None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # input_ids, attention_mask: (B, N)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        t_ori = out.last_hidden_state  # (B, N, d_t)
        return t_ori, attention_mask


class TextFeatureCache:
    """Remembers a frozen text encoder's output per sentence.

    A frozen encoder gives every sentence the same features at every step, and referring
    datasets repeat their sentences epoch after epoch (the synthetic scenes use a few hundred
    templates), so the CPU demo computes each sentence once. Keys are the token ids and
    attention mask of one row; the least recently used rows are dropped beyond
    ``max_entries``. The encoder must stay in eval mode (no dropout) with no trainable
    parameters; :meth:`__call__` refuses an encoder with a trainable parameter.

    Args:
        encoder: a :class:`TextEncoder` (or anything with its ``forward`` contract).
        max_entries: the most sentences kept (each is N x d_t floats: 30 KB for MiniLM,
            61 KB for BERT-base at N = 20, so 4096 sentences hold at most 250 MB).
    """

    def __init__(self, encoder: nn.Module, max_entries: int = 4096) -> None:
        from collections import OrderedDict

        if max_entries < 1:
            raise ConfigError(f"max_entries={max_entries} must be at least 1")
        self.encoder = encoder
        self.max_entries = int(max_entries)
        self._rows: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encoder(input_ids, attention_mask)``, from the cache where possible."""
        if any(p.requires_grad for p in self.encoder.parameters()):
            raise ConfigError(
                "TextFeatureCache needs a frozen text encoder; set requires_grad=False on its "
                "parameters or do not use the cache"
            )
        ids_np, mask_np = input_ids.cpu().numpy(), attention_mask.cpu().numpy()  # one copy
        keys = [ids.tobytes() + mask.tobytes() for ids, mask in zip(ids_np, mask_np)]
        missing = [i for i, k in enumerate(keys) if k not in self._rows]
        if missing:
            with torch.no_grad():
                feats, masks = self.encoder(input_ids[missing], attention_mask[missing])
            for j, i in enumerate(missing):
                self._rows[keys[i]] = (feats[j], masks[j])
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        rows = []
        for k in keys:
            self._rows.move_to_end(k)
            rows.append(self._rows[k])
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
