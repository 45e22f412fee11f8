"""One image, one picture: a 4-band uint16 GeoTIFF gives the same foreground probability
through the training path (JSONL dataset + ReferringTransform + model), Predictor.predict and
`entitwist segment`, and the entity map `entitwist entities` stores for it is the one segment
computes. Also: the model's preprocess is the training transform's, and close to PIL."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

rasterio = pytest.importorskip("rasterio")

import entitwist  # noqa: E402
from entitwist.data import ReferringTransform, load_dataset  # noqa: E402
from entitwist.imaging import IMAGENET_MEAN, IMAGENET_STD, read_image, read_label_map  # noqa: E402
from entitwist.inference.predictor import Predictor  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCE = "the bright field on the left"
H, W = 72, 88


def scene() -> np.ndarray:
    """(4, H, W) uint16 with fields of different brightness per band, noise, a nodata
    corner (0) and a bright NIR band."""
    rng = np.random.default_rng(7)
    data = rng.integers(300, 900, (4, H, W)).astype(np.uint16)
    data[:, 10:40, 8:40] += np.array([2500, 1800, 900, 0], np.uint16)[:, None, None]
    data[:, 45:70, 50:85] += np.array([300, 1500, 2600, 0], np.uint16)[:, None, None]
    data[3] = data[3] * 6 + 4000
    data[:, :4, -6:] = 0  # nodata
    return data


@pytest.fixture(autouse=True)
def exact_precision(monkeypatch):
    """Inference in fp32 (the default on a CPU may be int8, within 0.05 of it): these tests
    are about the picture, so the network must compute exactly as in training."""
    from entitwist.inference import precision

    original = precision.apply_precision
    monkeypatch.setattr(
        precision,
        "apply_precision",
        lambda model, p="auto", device="cpu": original(model, "32", device),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from rasterio.transform import from_origin

    base = tmp_path_factory.mktemp("one_picture")
    root = base / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tif = root / "images" / "scene.tif"
    profile = dict(
        driver="GTiff",
        width=W,
        height=H,
        count=4,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32633",
        transform=from_origin(500000, 4600000, 0.5, 0.5),
    )
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(scene())
    mask = np.zeros((H, W), np.uint8)
    mask[10:40, 8:40] = 255
    Image.fromarray(mask).save(root / "masks" / "m.png")
    row = {"image": "images/scene.tif", "mask": "masks/m.png", "expression": SENTENCE}
    (root / "annotations.jsonl").write_text(json.dumps({**row, "split": "test"}) + "\n")

    torch.manual_seed(0)
    model = entitwist.create_model("entitwist_tiny").eval()
    model.save_pretrained(base / "model")
    from entitwist.cli import main

    assert main(["entities", str(root), "--quiet"]) == 0
    return {"root": root, "tif": tif, "model_dir": base / "model", "base": base}


def training_probability(world) -> tuple[np.ndarray, torch.Tensor]:
    """The training/evaluation path, upsampled to (H, W) as Predictor does."""
    from entitwist.models.enti_twistnet import EntiTwistNet

    model = EntiTwistNet.from_pretrained(world["model_dir"]).eval()
    size = model.config.visual.img_size
    ds = load_dataset(
        "jsonl",
        world["root"],
        "test",
        transform=ReferringTransform(size, model.tokenizer),
        entities="auto",
    )
    sample = ds[0]
    assert sample["image"].shape == (3, size, size) and "entities" in sample
    with torch.no_grad():
        logits = model(
            sample["image"][None],
            sample["input_ids"][None],
            sample["attention_mask"][None],
            sample["entities"][None],
        )
    prob = torch.softmax(logits, 1)[:, 1:2]
    prob = F.interpolate(prob, size=(H, W), mode="bilinear", align_corners=False)
    return prob[0, 0].numpy(), sample["entities"]


def test_training_predictor_and_segment_give_one_probability(world, monkeypatch):
    train_prob, train_entities = training_probability(world)

    predictor = Predictor.from_pretrained(world["model_dir"], device="cpu")
    pred = predictor.predict(world["tif"], SENTENCE)
    assert pred.probability.shape == (H, W)

    seen: list[np.ndarray] = []
    original = Predictor.entity_labels

    def spy(self, image):
        labels = original(self, image)
        seen.append(labels)
        return labels

    monkeypatch.setattr(Predictor, "entity_labels", spy)
    out = world["base"] / "seg_prob.tif"
    from entitwist.cli import main

    argv = [
        "segment",
        str(world["tif"]),
        SENTENCE,
        "-m",
        str(world["model_dir"]),
        "--probability",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--overwrite",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    with rasterio.open(out) as ds:
        seg_prob = ds.read(1)
    valid = np.isfinite(seg_prob)
    assert valid.sum() == H * W - 4 * 6  # the nodata corner only

    assert predictor.precision == "32"
    np.testing.assert_allclose(pred.probability, train_prob, atol=1e-5, rtol=0)
    np.testing.assert_allclose(seg_prob[valid], train_prob[valid], atol=1e-5, rtol=0)
    # not a vacuous match: the probability varies over the scene
    assert train_prob.max() - train_prob.min() > 1e-3

    # the entity map segment computed is the one `entitwist entities` stored, and the
    # network saw it resized like the training transform resizes the stored map
    stores = [p for p in (world["root"] / "entities").rglob("*.png")]
    assert len(stores) == 1
    stored = read_label_map(stores[0])
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], stored)
    assert len(np.unique(stored)) > 2  # a real map, not a constant one
    from entitwist.imaging import resize_nearest

    size = predictor.image_size
    np.testing.assert_array_equal(
        train_entities.numpy(), resize_nearest(stored, (size, size)).astype(np.int64)
    )


def test_the_picture_is_the_per_band_stretch_of_bands_1_2_3(world):
    rgb = read_image(world["tif"])
    data = scene().astype(np.float64)
    valid = np.all(data[:3] != 0, axis=0)
    for c in range(3):
        lo, hi = np.percentile(data[c][valid], (2, 98))
        want = np.clip(np.rint((data[c] - lo) * 255 / (hi - lo)), 0, 255)
        np.testing.assert_array_equal(rgb[..., c], np.where(valid, want, 0))


def test_preprocess_is_the_training_transform_and_close_to_pil(world):
    from entitwist.models.enti_twistnet import EntiTwistNet

    model = EntiTwistNet.from_pretrained(world["model_dir"])
    s = model.config.visual.img_size
    rgb = read_image(world["tif"])
    x = model.preprocess(rgb)
    assert x.shape == (1, 3, s, s) and x.dtype == torch.float32
    sample = ReferringTransform(s)({"image": rgb, "expression": SENTENCE})
    assert torch.equal(x[0], sample["image"])
    assert torch.equal(model.preprocess(np.stack([rgb, rgb])), torch.cat([x, x]))
    assert torch.equal(model.preprocess(torch.from_numpy(rgb)), x)
    # independent twin: PIL bilinear + ImageNet statistics written out (2 grey levels)
    pil = np.asarray(Image.fromarray(rgb).resize((s, s), Image.Resampling.BILINEAR), np.float32)
    twin = (pil / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    diff = np.abs(x[0].permute(1, 2, 0).numpy() - twin) * np.array(IMAGENET_STD) * 255
    assert diff.max() <= 2.0 + 1e-3 and diff.mean() < 0.6
    # buffers: on the model, not in the saved weights (old folders keep loading)
    assert torch.allclose(model.pixel_mean, torch.tensor(IMAGENET_MEAN))
    assert "pixel_mean" not in model.state_dict()
    with pytest.raises(entitwist.errors.InputError, match="uint8"):
        model.preprocess(rgb.astype(np.float32))


def test_imaging_options_travel_with_the_model(world, tmp_path):
    from entitwist.models.enti_twistnet import EntiTwistNet

    model = EntiTwistNet.from_pretrained(world["model_dir"])
    model.config = model.config.replace(imaging__bands=[4, 3, 2], imaging__stretch=[1, 99])
    model.save_pretrained(tmp_path / "m")
    predictor = Predictor.from_pretrained(tmp_path / "m", device="cpu")
    assert predictor.read_options == {"bands": "4,3,2", "stretch": (1.0, 99.0)}
    want = read_image(world["tif"], bands="4,3,2", stretch="1,99")
    seen = []
    original = predictor.prepare
    predictor.prepare = lambda image: (seen.append(image), original(image))[1]
    pred = predictor.predict(world["tif"], SENTENCE, entities=None)
    np.testing.assert_array_equal(seen[0], want)
    # segment without --bands/--stretch reads as the model was trained
    from entitwist.cli import main

    out = tmp_path / "p.tif"
    argv = ["segment", str(world["tif"]), SENTENCE, "-m", str(tmp_path / "m")]
    argv += ["--probability", str(out), "--device", "cpu", "--quiet", "--entities", "none"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    with rasterio.open(out) as ds:
        seg_prob = ds.read(1)
    valid = np.isfinite(seg_prob)
    np.testing.assert_allclose(seg_prob[valid], pred.probability[valid], atol=1e-3, rtol=0)


def test_training_reads_with_the_model_imaging(world, tmp_path):
    """The datamodule links the model's config.imaging into every dataset it builds (and
    takes the entity store that was read with the same bands)."""
    import shutil
    from types import SimpleNamespace

    from entitwist.cli import main
    from entitwist.imaging import prepare_image
    from entitwist.models.enti_twistnet import EntiTwistNet
    from entitwist.train.datamodule import ReferringDataModule

    root = tmp_path / "data"
    shutil.copytree(world["root"], root)
    shutil.rmtree(root / "entities")
    assert main(["entities", str(root), "--quiet", "--bands", "4,3,2"]) == 0
    model = EntiTwistNet.from_pretrained(world["model_dir"])
    model.config = model.config.replace(imaging__bands=[4, 3, 2])
    dm = ReferringDataModule.for_module(
        SimpleNamespace(model=model),
        dataset="jsonl",
        root=str(root),
        train_split=None,
        val_split=None,
        test_split="test",
    )
    dm.setup("test")
    ds = dm.datasets["test"]
    assert ds.read_options == {"bands": "4,3,2", "stretch": None}
    s = model.config.visual.img_size
    want = prepare_image(read_image(world["tif"], bands="4,3,2"), (s, s))
    assert torch.equal(ds[0]["image"], want)
    assert not torch.equal(want, prepare_image(read_image(world["tif"]), (s, s)))


def test_the_app_reads_the_same_picture(world, tmp_path):
    from entitwist.app.inputs import read_upload

    up = read_upload(world["tif"])
    np.testing.assert_array_equal(up.rgb, read_image(world["tif"]))
    up = read_upload(world["tif"], recorded={"bands": "4,3,2", "stretch": None})
    np.testing.assert_array_equal(up.rgb, read_image(world["tif"], bands="4,3,2"))
    rgb = read_image(world["tif"])
    Image.fromarray(rgb).save(tmp_path / "scene.jpg", quality=85)
    up = read_upload(tmp_path / "scene.jpg")
    np.testing.assert_array_equal(up.rgb, read_image(tmp_path / "scene.jpg"))
