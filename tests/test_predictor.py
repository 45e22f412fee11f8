"""Predictor: resizing, normalisation, probabilities, batching, entities, devices, checkpoints.

Most tests use :class:`RedModel`, a deterministic stand-in with the network's interface
whose foreground is "red exceeds green" (or the reverse for sentences that say "green"),
so the expected mask of a drawn square is known exactly. One test runs the real
``entitwist_tiny`` network through ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from entitwist.errors import CheckpointError, InputError
from entitwist.imaging import IMAGENET_MEAN, IMAGENET_STD
from entitwist.inference.inputs import resolve_device
from entitwist.inference.predictor import Prediction, Predictor
from entitwist.models.hub import check_checkpoint_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GREEN_ID = 7


class FakeTokenizer:
    """Word ids: 'green' -> 7, any other word -> 5; [CLS]=1, [SEP]=2, padded to max_tokens."""

    def __init__(self, max_tokens: int = 8) -> None:
        self.max_tokens = max_tokens

    def encode(self, sentence: str) -> list[int]:
        if not sentence.strip():
            raise InputError("empty referring expression")
        return [1] + [GREEN_ID if w == "green" else 5 for w in sentence.lower().split()] + [2]

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join("green" if i == GREEN_ID else "w" for i in ids if i > 2)

    def __call__(self, sentences):
        sentences = [sentences] if isinstance(sentences, str) else sentences
        ids = torch.zeros(len(sentences), self.max_tokens, dtype=torch.long)
        for b, s in enumerate(sentences):
            e = self.encode(s)
            e = e[: self.max_tokens - 1] + [2] if len(e) > self.max_tokens else e
            ids[b, : len(e)] = torch.tensor(e)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


class RedModel(torch.nn.Module):
    """The network's interface with a known answer: foreground logit = 20 * (red - green)
    of the (un-normalised) input, negated for sentences holding the word 'green'."""

    def __init__(
        self, size: int = 32, seg: bool = True, max_entities: int = 40, max_tokens: int = 8
    ) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            visual=SimpleNamespace(img_size=size),
            fusion=SimpleNamespace(seg=seg, max_entities=max_entities),
            text=SimpleNamespace(max_tokens=max_tokens),
        )
        self.tokenizer = FakeTokenizer(max_tokens)
        self.gain = torch.nn.Parameter(torch.tensor(20.0))
        self.calls: list[dict] = []

    def forward(self, image, input_ids, attention_mask, entities=None):
        mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
        rgb = image * std + mean  # (B, 3, S, S) in [0, 1]
        sign = torch.where((input_ids == GREEN_ID).any(dim=1), -1.0, 1.0).view(
            -1, 1, 1
        )  # (B, 1, 1)
        fg = self.gain * sign * (rgb[:, 0] - rgb[:, 1])  # (B, S, S)
        self.calls.append(
            {
                "batch": image.shape[0],
                "size": tuple(image.shape[-2:]),
                "entities": entities,
                "ids": input_ids,
            }
        )
        return torch.stack([torch.zeros_like(fg), fg], dim=1)  # (B, 2, S, S)


def square_image(h: int = 60, w: int = 90, box=(10, 40, 20, 60), color=(230, 20, 20)) -> np.ndarray:
    """Grey image with a coloured rectangle rows box[0]:box[1], cols box[2]:box[3]."""
    img = np.full((h, w, 3), (90, 110, 100), dtype=np.uint8)  # slightly green: logit < 0
    img[box[0] : box[1], box[2] : box[3]] = color
    return img


def reference_probability(model: RedModel, image: np.ndarray, sentence: str) -> np.ndarray:
    """A plain twin of Predictor's path: resize, normalise, forward, softmax, resize back."""
    s = model.config.visual.img_size
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True) / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    tok = model.tokenizer([sentence])
    with torch.no_grad():
        logits = model(x, tok["input_ids"], tok["attention_mask"], None)
    p = torch.softmax(logits, 1)[:, 1:2]
    return F.interpolate(p, size=image.shape[:2], mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def test_predict_finds_the_square_and_matches_reference_twin():
    model = RedModel(size=64)
    pred = Predictor(model, device="cpu").predict(square_image(), "the red square", entities=None)
    assert isinstance(pred, Prediction) and pred.sentence == "the red square"
    assert pred.mask.shape == (60, 90) and pred.mask.dtype == bool
    assert pred.probability.shape == (60, 90) and pred.probability.dtype == np.float32
    assert 0.0 <= pred.probability.min() and pred.probability.max() <= 1.0
    expected = np.zeros((60, 90), bool)
    expected[10:40, 20:60] = True
    iou = (pred.mask & expected).sum() / (pred.mask | expected).sum()
    assert iou > 0.9
    assert (
        pred.mask[12:38, 22:58].all()
        and not pred.mask[45:, :].any()
        and not pred.mask[:, 65:].any()
    )
    np.testing.assert_array_equal(pred.mask, pred.probability >= 0.5)
    ref = reference_probability(model, square_image(), "the red square")
    np.testing.assert_allclose(pred.probability, ref, atol=2e-3)


def test_model_sees_its_input_size_and_imagenet_normalisation():
    model = RedModel(size=32)
    img = np.zeros((50, 70, 3), np.uint8)
    img[..., 0] = 255
    Predictor(model, device="cpu").predict(img, "x", entities=None)
    call = model.calls[-1]
    assert call["size"] == (32, 32) and call["batch"] == 1
    # a pure red image gives a uniform foreground logit of 20 * (1 - 0) -> probability sigmoid(20)
    pred = Predictor(model, device="cpu").predict(img, "x", entities=None)
    np.testing.assert_allclose(pred.probability, 1 / (1 + np.exp(-20.0)), atol=1e-5)


def test_output_size_native_or_explicit():
    predictor = Predictor(RedModel(size=32), device="cpu")
    img = square_image()
    assert predictor.predict_probability(img, ["a"], entities=None, output_size=None).shape == (
        1,
        32,
        32,
    )
    assert predictor.predict_probability(img, ["a"], entities=None, output_size=(7, 9)).shape == (
        1,
        7,
        9,
    )
    full = predictor.predict_probability(img, ["a"], entities=None)
    native = predictor.predict_probability(img, ["a"], entities=None, output_size=None)
    ref = F.interpolate(
        torch.from_numpy(native)[None], size=(60, 90), mode="bilinear", align_corners=False
    )[0]
    np.testing.assert_allclose(full, ref.numpy(), atol=1e-6)


def test_several_sentences_are_one_batch_and_match_single_calls():
    model = RedModel(size=48)
    predictor = Predictor(model, device="cpu")
    img = square_image(color=(230, 20, 20))
    img[45:55, 5:30] = (20, 230, 20)  # a green bar
    preds = predictor.predict(img, ["the red square", "the green bar"], entities=None)
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 2
    assert [p.sentence for p in preds] == ["the red square", "the green bar"]
    assert preds[0].mask[20, 40] and not preds[0].mask[50, 15]
    assert preds[1].mask[50, 15] and not preds[1].mask[20, 40]
    for p in preds:
        single = predictor.predict(img, p.sentence, entities=None)
        np.testing.assert_allclose(single.probability, p.probability, atol=1e-6)


def test_batch_size_splits_forward_passes():
    model = RedModel(size=32)
    Predictor(model, device="cpu", batch_size=2).predict(
        square_image(), ["a", "b", "c", "green d", "e"], entities=None
    )
    assert [c["batch"] for c in model.calls] == [2, 2, 1]


def test_auto_entities_computed_once_for_all_sentences(monkeypatch):
    import entitwist.entities as ent

    seen = []

    def fake_compute(image, generator=None, max_entities=40, **params):
        seen.append((image.shape, generator, max_entities))
        labels = np.zeros(image.shape[:2], np.uint8)
        labels[:, image.shape[1] // 2 :] = 3
        return labels

    monkeypatch.setattr(ent, "compute_entities", fake_compute)
    model = RedModel(size=32, max_entities=12)
    predictor = Predictor(model, device="cpu")
    predictor.predict(square_image(), ["a", "b", "c"])  # entities="auto" by default
    # on the full-resolution picture, as `entitwist entities` computes the training maps
    assert seen == [((60, 90, 3), predictor.get_entity_generator(), 12)]
    assert predictor.get_entity_generator().name == "felzenszwalb"
    e = model.calls[0]["entities"]
    assert e.dtype == torch.long and tuple(e.shape) == (3, 32, 32)
    assert torch.equal(e[0], e[2]) and int(e[0, 0, 0]) == 0 and int(e[0, 0, -1]) == 3
    # resized nearest like the training transform: column j takes source column
    # floor((j + 0.5) * 90 / 32), labelled 3 from column 45 on
    want = np.where((np.arange(32) + 0.5) * 90 / 32 >= 45, 3, 0)
    np.testing.assert_array_equal(e[0, 0].numpy(), want)


def test_unknown_generator_and_missing_sam_checkpoint(tmp_path):
    from entitwist.errors import ConfigError

    with pytest.raises(ConfigError):
        Predictor(RedModel(), device="cpu", entity_generator="nope").predict(square_image(), "a")
    with pytest.raises(InputError, match="SAM checkpoint"):
        Predictor(RedModel(), device="cpu", sam_checkpoint=tmp_path / "sam_vit_b.pth")


def test_sam_checkpoint_selects_the_sam_generator(tmp_path):
    ckpt = tmp_path / "sam_vit_b.pth"
    ckpt.write_bytes(b"not really weights")
    predictor = Predictor(RedModel(), device="cpu", sam_checkpoint=ckpt)
    gen = predictor.get_entity_generator()  # built, weights loaded only when first used
    assert gen.name == "sam" and str(gen.checkpoint) == str(ckpt)


def test_real_weight_free_entities_reach_the_model():
    model = RedModel(size=32)
    Predictor(model, device="cpu").predict(square_image(), "a")
    e = model.calls[0]["entities"]
    assert tuple(e.shape) == (1, 32, 32) and e.dtype == torch.long
    assert 1 <= int(e.max()) <= 40 and len(torch.unique(e)) >= 2  # the square is its own region


def test_entities_none_array_and_seg_off():
    model = RedModel(size=32)
    p = Predictor(model, device="cpu")
    p.predict(square_image(), "a", entities=None)
    assert model.calls[-1]["entities"] is None
    labels = np.zeros((60, 90), np.uint8)
    labels[30:, :] = 2  # bottom half
    p.predict(square_image(), "a", entities=labels)
    e = model.calls[-1]["entities"][0]
    assert int(e[0, 0]) == 0 and int(e[-1, 0]) == 2 and set(torch.unique(e).tolist()) == {0, 2}
    off = RedModel(size=32, seg=False)
    Predictor(off, device="cpu").predict(square_image(), "a", entities=labels)
    assert off.calls[-1]["entities"] is None


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((60, 90, 1), np.uint8),
        np.full((60, 90), 99, np.uint8),
        np.zeros((60, 90), np.float32),
    ],
)
def test_bad_entity_maps(labels):
    with pytest.raises(InputError):
        Predictor(RedModel(size=32, max_entities=40), device="cpu").predict(
            square_image(), "a", entities=labels
        )


def test_image_from_path(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(square_image()).save(path)
    pred = Predictor(RedModel(size=64), device="cpu").predict(path, "a", entities=None)
    assert pred.mask.shape == (60, 90) and pred.mask[25, 40] and not pred.mask[5, 5]


def test_grey_and_rgba_arrays_accepted():
    p = Predictor(RedModel(size=32), device="cpu")
    assert p.predict(np.full((20, 30), 50, np.uint8), "a", entities=None).mask.shape == (20, 30)
    rgba = np.dstack([square_image(), np.full((60, 90), 255, np.uint8)])
    np.testing.assert_array_equal(
        p.predict(rgba, "a", entities=None).probability,
        p.predict(square_image(), "a", entities=None).probability,
    )


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 2), np.uint8),
        [[1, 2]],
    ],
)
def test_bad_images(image):
    with pytest.raises(InputError):
        Predictor(RedModel(), device="cpu").predict(image, "a", entities=None)


@pytest.mark.parametrize("sentences", ["", "   ", [], ["ok", ""]])
def test_bad_sentences(sentences):
    with pytest.raises(InputError):
        Predictor(RedModel(), device="cpu").predict(square_image(), sentences, entities=None)


def test_resolve_device():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError):
        resolve_device("tpu")
    with pytest.raises(InputError):
        resolve_device("not a device")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_checkpoint_folder_checks(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint_dir(tmp_path / "nope")
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="save_pretrained"):
        check_checkpoint_dir(ckpt)
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        check_checkpoint_dir(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        check_checkpoint_dir(folder)
    (folder / "model.safetensors").write_bytes(b"")
    check_checkpoint_dir(folder)  # complete
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        Predictor.from_pretrained(folder)


def test_unknown_hub_id_offline_is_a_checkpoint_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="hub"):
        Predictor.from_pretrained("nobody-xyz/not-a-model-entitwist")


@pytest.mark.slow
def test_real_tiny_network_roundtrip(tmp_path):
    """The real network: save_pretrained -> Predictor.from_pretrained -> batched predict,
    checked against a direct forward of the loaded network."""
    import entitwist

    torch.manual_seed(0)
    entitwist.create_model("entitwist_tiny").save_pretrained(tmp_path / "tiny")
    predictor = Predictor.from_pretrained(tmp_path / "tiny", device="cpu")
    s = predictor.image_size
    img = square_image(h=40, w=52)
    preds = predictor.predict(img, ["the red square", "the grey background"], entities=None)
    assert [p.probability.shape for p in preds] == [(40, 52), (40, 52)]
    for p in preds:
        assert p.probability.dtype == np.float32 and np.isfinite(p.probability).all()
        assert 0 <= p.probability.min() and p.probability.max() <= 1
        np.testing.assert_array_equal(p.mask, p.probability >= 0.5)
    # direct forward twin for the first sentence (the input: the model's own preprocess,
    # tested against PIL in test_one_picture)
    x = predictor.model.preprocess(img)
    assert x.shape == (1, 3, s, s)
    tok = predictor.model.tokenizer(["the red square"])
    with torch.no_grad():
        logits = predictor.model(x, tok["input_ids"], tok["attention_mask"], None)
    ref = F.interpolate(
        torch.softmax(logits, 1)[:, 1:2], size=(40, 52), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(preds[0].probability, ref[0, 0].numpy(), atol=1e-4)
