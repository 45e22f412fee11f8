"""ReferringTransform and collate_referring: resizes checked against PIL, tokens, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from entitwist.data.transforms import ReferringTransform, collate_referring
from entitwist.errors import InputError
from entitwist.imaging import IMAGENET_MEAN, IMAGENET_STD, resize_image
from entitwist.imaging import resize_nearest as resize_labels


def _sample(h=24, w=36, seed=0, entities=True):
    rng = np.random.default_rng(seed)
    s = {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "mask": (rng.random((h, w)) < 0.3).astype(np.uint8),
        "expression": "the red car on the left",
        "sample_id": f"s{seed}",
        "image_id": "img",
        "ref_id": "r",
        "image_key": "images/img",
        "orig_size": (h, w),
    }
    if entities:
        s["entities"] = rng.integers(0, 41, (h, w), dtype=np.uint8)
    return s


class FakeTokenizer:
    """Word -> hash id, padded to N: enough to check the plumbing."""

    def __init__(self, n=20):
        self.n = n

    def __call__(self, sentences):
        ids = torch.zeros(len(sentences), self.n, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, s in enumerate(sentences):
            words = [101] + [1000 + sum(map(ord, w)) for w in s.split()][: self.n - 2] + [102]
            ids[i, : len(words)] = torch.tensor(words)
            att[i, : len(words)] = 1
        return {"input_ids": ids, "attention_mask": att}


@pytest.mark.parametrize(
    "src,dst",
    [((24, 36), (16, 16)), ((17, 13), (40, 29)), ((512, 512), (480, 480)), ((9, 9), (9, 9))],
)
def test_resize_labels_equals_pil_nearest(src, dst):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, src, dtype=np.uint8)
    want = np.asarray(Image.fromarray(a).resize(dst[::-1], Image.Resampling.NEAREST))
    got = resize_labels(torch.from_numpy(a), dst)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize(
    "src,dst", [((64, 48), (32, 32)), ((20, 30), (45, 40)), ((512, 512), (480, 480))]
)
def test_resize_image_matches_pil_bilinear(src, dst):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(a).resize(dst[::-1], Image.Resampling.BILINEAR)).astype(
        np.float64
    )
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    got = resize_image(t, dst).permute(1, 2, 0).numpy() * 255
    assert np.abs(got - want).max() <= 2.0  # PIL rounds to uint8 and uses fixed point
    assert np.abs(got - want).mean() < 0.6
    # the uint8 fast path used by ReferringTransform: within two grey levels of PIL
    u8 = resize_image(torch.from_numpy(a).permute(2, 0, 1), dst)
    assert u8.dtype == torch.uint8 and u8.shape == (3, *dst)
    diff = np.abs(u8.permute(1, 2, 0).numpy().astype(float) - want)
    assert diff.max() <= 2.0 and diff.mean() < 0.6


def test_transform_shapes_dtypes_and_values():
    s = _sample()
    s["image"][:] = (255, 0, 128)
    out = ReferringTransform(size=16, tokenizer=FakeTokenizer())(s)
    assert out["image"].shape == (3, 16, 16) and out["image"].dtype == torch.float32
    want = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    torch.testing.assert_close(out["image"][:, 5, 7], want)
    assert out["mask"].shape == (16, 16) and out["mask"].dtype == torch.long
    assert set(out["mask"].unique().tolist()) <= {0, 1}
    assert out["entities"].shape == (16, 16) and out["entities"].dtype == torch.long
    np.testing.assert_array_equal(
        out["entities"].numpy(),
        np.asarray(Image.fromarray(s["entities"]).resize((16, 16), Image.Resampling.NEAREST)),
    )
    assert out["mask_orig"].dtype == torch.bool and out["mask_orig"].shape == (24, 36)
    np.testing.assert_array_equal(out["mask_orig"].numpy(), s["mask"].astype(bool))
    assert out["input_ids"].shape == (20,) and out["attention_mask"].shape == (20,)
    assert out["attention_mask"].sum() == 8  # CLS + 6 words + SEP
    for key in ("expression", "sample_id", "image_id", "ref_id", "image_key", "orig_size"):
        assert out[key] == s[key]


def test_transform_without_tokenizer_or_resize():
    s = _sample(entities=False)
    out = ReferringTransform(size=None)(s)
    assert out["image"].shape == (3, 24, 36) and "input_ids" not in out and "entities" not in out
    np.testing.assert_array_equal(out["mask"].numpy(), s["mask"])
    out2 = ReferringTransform(size=(8, 12))(s)
    assert out2["image"].shape == (3, 8, 12) and out2["mask"].shape == (8, 12)
    with pytest.raises(InputError, match="uint8"):
        ReferringTransform()({**s, "image": s["image"].astype(np.float32)})


def test_real_tokenizer_from_text_config():
    text = pytest.importorskip("entitwist.models.tokenizer")
    from entitwist.config import TextConfig

    tok = text.build_tokenizer(TextConfig(pretrained=None, vocab="tiny", max_tokens=20))
    out = ReferringTransform(size=8, tokenizer=tok)(_sample())
    ids = out["input_ids"]
    assert ids.shape == (20,) and out["attention_mask"].shape == (20,)
    n = int(out["attention_mask"].sum())
    assert n == 8  # [CLS] the red car on the left [SEP]
    unk = tok(["zzzqqqxxy"])["input_ids"][0, 1].item()
    assert unk not in ids[1 : n - 1].tolist()  # real words get real ids
    assert len(set(ids[1 : n - 1].tolist())) == 5  # "the" twice


def test_collate_stacks_tensors_and_lists_the_rest():
    t = ReferringTransform(size=16, tokenizer=FakeTokenizer())
    samples = [t(_sample(24, 36, 0)), t(_sample(30, 20, 1))]
    b = collate_referring(samples)
    assert b["image"].shape == (2, 3, 16, 16)
    assert b["mask"].shape == (2, 16, 16) and b["entities"].shape == (2, 16, 16)
    assert b["input_ids"].shape == (2, 20)
    assert isinstance(b["mask_orig"], list) and [m.shape for m in b["mask_orig"]] == [
        (24, 36),
        (30, 20),
    ]
    assert b["sample_id"] == ["s0", "s1"] and b["orig_size"] == [(24, 36), (30, 20)]
    torch.testing.assert_close(b["image"][1], samples[1]["image"])
    # same-size mask_orig is still a list
    assert isinstance(collate_referring([samples[0], samples[0]])["mask_orig"], list)
    no_ent = t(_sample(entities=False))
    with pytest.raises(InputError, match="different keys.*entities"):
        collate_referring([samples[0], no_ent])
    with pytest.raises(InputError, match="cannot stack 'image'"):
        collate_referring(
            [
                ReferringTransform(size=None)(_sample(8, 8, entities=False)),
                ReferringTransform(size=None)(_sample(9, 9, entities=False)),
            ]
        )
    with pytest.raises(InputError, match="empty"):
        collate_referring([])


def test_dataloader_end_to_end(tmp_path):
    from entitwist.data import load_dataset
    from fake_layouts import make_entities, make_jsonl

    truth = make_jsonl(tmp_path, n_images=2)
    make_entities(tmp_path, truth["images"], k=6)
    ds = load_dataset(
        "jsonl", tmp_path, "train", transform=ReferringTransform(16, FakeTokenizer()), seed=0
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_referring)
    batches = list(loader)
    assert len(batches) == 1
    b = batches[0]
    assert b["image"].shape == (2, 3, 16, 16) and b["entities"].max() <= 6
    assert b["ref_id"] == ["masks/img_0_obj0.png", "masks/img_0_obj1.png"]
