"""Entity-mask generators: weight-free ones on drawn images, SAM plumbing with tiny random SAMs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import entitwist.entities as E
from entitwist.entities.base import contrast_stretch
from entitwist.errors import CheckpointError, ConfigError, InputError
from entitwist.imaging import nearest_index, resize_nearest


def blocks_image(h: int = 96, w: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four flat colour quadrants with mild noise; returns (image, quadrant id map)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((h, w), dtype=np.int64)
    ids[: h // 2, w // 2 :] = 1
    ids[h // 2 :, : w // 2] = 2
    ids[h // 2 :, w // 2 :] = 3
    colours = np.array([[200, 40, 40], [40, 180, 60], [30, 60, 200], [230, 230, 90]])
    image = colours[ids] + rng.integers(-6, 7, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), ids


def random_texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    image = np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w]
    return np.clip(image.astype(int) + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(
        np.uint8
    )


# --- weight-free ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["felzenszwalb", "felzenszwalb-rag", "slic"])
def test_weight_free_masks_partition_the_image(name: str) -> None:
    image, _ = blocks_image()
    gen = E.get_generator(name)
    masks = gen(image)
    assert gen.name == name and gen.checkpoint_sha256 is None
    assert len(masks) >= 2
    for m in masks:
        assert m.dtype == bool and m.shape == (96, 128)
    cover = np.sum(masks, axis=0)  # (H, W) how many masks cover each pixel
    assert (cover == 1).all()  # a partition: every pixel in exactly one mask


def test_felzenszwalb_finds_flat_regions() -> None:
    image, ids = blocks_image(128, 128)
    masks = E.get_generator("felzenszwalb")(image)
    for q in range(4):
        region = ids == q
        best = max((m & region).sum() / (m | region).sum() for m in masks)
        assert best > 0.9, (q, best)


def road_scene(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A grey road across a textured green field, with three small cars on the road.

    Returns (image (128, 128, 3) uint8, [car masks]). Cars are 10 x 5 px, a colour of
    their own; the road and the field are large regions with mild texture.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((128, 128, 3), np.int64)
    image[:] = (70, 130, 60)
    image[::2, ::3] += (12, 14, 6)  # field texture
    image[48:80] = (110, 110, 112)  # road
    image[63:65, ::6] = (230, 230, 230)  # lane marks
    cars = []
    for x0, colour in ((10, (205, 40, 35)), (60, (240, 210, 40)), (100, (30, 60, 190))):
        car = np.zeros((128, 128), bool)
        car[55:60, x0 : x0 + 10] = True
        image[car] = colour
        cars.append(car)
    image += rng.integers(-5, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), cars


def test_felzenszwalb_rag_keeps_small_objects_whole_and_merges_background() -> None:
    image, cars = road_scene()
    fine = E.get_generator("felzenszwalb-rag")
    labels, n_segments = fine.label_map(image, 40)
    for car in cars:  # each car is one entity of its own: no road or field in it
        ids, counts = np.unique(labels[car], return_counts=True)
        assert ids[np.argmax(counts)] > 0
        entity = labels == ids[np.argmax(counts)]
        assert (entity & car).sum() / (entity | car).sum() > 0.8
    # felzenszwalb with its defaults (tuned for real 512 px scenes) absorbs them into the road
    plain, _ = E.get_generator("felzenszwalb").label_map(image, 40)
    for car in cars:
        ids, counts = np.unique(plain[car], return_counts=True)
        entity = plain == ids[np.argmax(counts)]
        assert (entity & car).sum() / (entity | car).sum() < 0.5
    # the merge is what joins the fine pieces: without it there are many more segments
    unmerged = E.get_generator(
        "felzenszwalb", **{k: v for k, v in fine.params.items() if k != "merge"}
    )
    assert len(unmerged(image)) > 2 * n_segments
    # a larger threshold merges more, never less
    coarse = E.get_generator("felzenszwalb-rag", merge=80.0)
    assert len(coarse(image)) <= n_segments
    assert fine.is_default and not coarse.is_default
    with pytest.raises(ConfigError, match=r"merge=0.0 .* must be > 0"):
        E.get_generator("felzenszwalb-rag", merge=0)
    blank = np.full((32, 32, 3), 90, np.uint8)  # one segment: nothing to merge
    assert len(fine(blank)) == 1


def _graph_merge(image: np.ndarray, labels: np.ndarray, thresh: float) -> np.ndarray:
    """The reference twin: scikit-image's region adjacency graph, cut at ``thresh``."""
    from skimage import graph

    return graph.cut_threshold(labels, graph.rag_mean_color(image, labels), thresh)


def test_array_merge_equals_scikit_image_graph() -> None:
    from skimage.segmentation import felzenszwalb

    from entitwist.data.synthetic_scene import generate_scene
    from entitwist.entities.generators import merge_similar_neighbours

    cases = []
    for seed in range(6):  # demo-like scenes, cut finely as the generator does
        image = generate_scene(seed, 96, object_scale=2.5, density=0.3).image
        cases.append((image, felzenszwalb(image, scale=30, sigma=0.5, min_size=5)))
    texture = random_texture(40, 56, 3)
    cases.append((texture, felzenszwalb(texture, scale=50, sigma=0.5, min_size=3)))
    image, ids = blocks_image(24, 32)
    cases.append((image, ids))  # four flat quadrants: nothing merges at 40
    rng = np.random.default_rng(0)  # labels touching only diagonally, ids in a shuffled order
    checker = (np.indices((9, 9)).sum(0) % 2) * (1 + rng.permutation(81).reshape(9, 9) % 3)
    cases.append((rng.integers(0, 256, (9, 9, 3)).astype(np.uint8), checker))
    cases.append((rng.integers(0, 256, (5, 7, 3)).astype(np.float32), rng.integers(0, 6, (5, 7))))
    merged_some = 0
    for image, labels in cases:
        _, labels = np.unique(labels, return_inverse=True)  # ids 0..n-1, as felzenszwalb gives
        labels = labels.reshape(image.shape[:2])
        for thresh in (10.0, 40.0, 120.0):
            want = _graph_merge(image, labels, thresh)
            got = merge_similar_neighbours(image, labels, thresh)
            np.testing.assert_array_equal(got, want)
            merged_some += int(got.max() < labels.max())
    assert merged_some >= 10  # the cases do merge, so the ids' order is tested
    # the generator's segments are the graph-merged ones
    gen = E.get_generator("felzenszwalb-rag")
    image = generate_scene(7, 128, object_scale=2.5, density=0.3).image
    fine = felzenszwalb(gen.work_image(image), scale=30, sigma=0.5, min_size=5)
    np.testing.assert_array_equal(
        gen.segment(gen.work_image(image)), _graph_merge(gen.work_image(image), fine, 40.0)
    )


def test_contrast_stretch_keeps_low_contrast_regions_apart() -> None:
    image, ids = blocks_image(128, 128)
    hazy = (110 + (image.astype(int) - 128) // 12).astype(np.uint8)  # contrast / 12
    stretched = contrast_stretch(hazy)
    assert stretched.dtype == np.uint8
    assert np.percentile(stretched, 2) <= 1 and np.percentile(stretched, 98) >= 254
    assert contrast_stretch(np.full((4, 4, 3), 7, np.uint8)).max() == 0  # flat: no blow-up

    def best_iou(masks: list[np.ndarray]) -> float:
        return min(
            max((m & (ids == q)).sum() / (m | (ids == q)).sum() for m in masks) for q in range(4)
        )

    assert best_iou(E.get_generator("felzenszwalb")(hazy)) > 0.9
    plain = E.get_generator("felzenszwalb", stretch=False)
    np.testing.assert_array_equal(plain.work_image(hazy), hazy)
    np.testing.assert_array_equal(E.get_generator().work_image(hazy), stretched)


@pytest.mark.parametrize("name", ["felzenszwalb", "felzenszwalb-rag", "slic"])
@pytest.mark.parametrize("size", [(64, 48), (300, 200), (257, 511)])
@pytest.mark.parametrize("k", [3, 40])
def test_fast_label_map_equals_painting(name: str, size: tuple[int, int], k: int) -> None:
    image = random_texture(*size, seed=size[0] + k)
    gen = E.get_generator(name)
    fast, n_masks = gen.label_map(image, k)
    masks = gen(image)
    slow = E.paint_label_map(masks, k)
    assert fast.dtype == np.uint8 and fast.shape == size
    assert n_masks == len(masks)
    np.testing.assert_array_equal(fast, slow)
    assert E.compute_entities(image, gen, k).tolist() == slow.tolist()


def test_work_size_downscales_then_upsamples(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = E.get_generator("felzenszwalb")
    seen = []
    original = type(gen).segment

    def spy(self, image):  # noqa: ANN001, ANN202
        seen.append(image.shape)
        return original(self, image)

    monkeypatch.setattr(type(gen), "segment", spy)
    masks = gen(random_texture(512, 384, 1))
    assert seen == [(256, 192, 3)]
    assert masks[0].shape == (512, 384)
    full = E.get_generator("felzenszwalb", work_size=0)
    full(random_texture(100, 60, 1))
    assert seen[-1] == (100, 60, 3)


def test_nearest_resize_matches_loop() -> None:
    src = np.arange(5 * 7).reshape(5, 7)
    out = resize_nearest(src, (12, 3))
    for i in range(12):
        for j in range(3):
            si = min(int((i + 0.5) * 5 / 12), 4)
            sj = min(int((j + 0.5) * 7 / 3), 6)
            assert out[i, j] == src[si, sj]
    assert nearest_index(4, 4).tolist() == [0, 1, 2, 3]


def test_generator_options_and_bad_input() -> None:
    assert E.list_generators() == ["felzenszwalb", "felzenszwalb-rag", "slic", "sam", "hf-sam"]
    assert E.get_generator().name == "felzenszwalb"
    gen = E.get_generator("felzenszwalb", scale=50)
    assert gen.params["scale"] == 50.0 and isinstance(gen.params["scale"], float)
    assert not gen.is_default and E.get_generator().is_default
    with pytest.raises(ConfigError, match="unknown entity generator 'watershed'"):
        E.get_generator("watershed")
    with pytest.raises(ConfigError, match="unknown parameter"):
        E.get_generator("slic", n_segment=3)
    with pytest.raises(ConfigError, match="must be of type int"):
        E.get_generator("slic", n_segments="many")
    image, _ = blocks_image()
    with pytest.raises(InputError, match="uint8"):
        gen(image.astype(np.float32))
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        gen(image[..., 0])
    with pytest.raises(InputError, match="numpy"):
        gen(image.tolist())


def test_weight_free_import_needs_no_heavy_packages() -> None:
    code = (
        "import sys, numpy as np, entitwist.entities as E;"
        "E.compute_entities(np.zeros((20, 20, 3), np.uint8));"
        "bad = [m for m in ('torch', 'segment_anything', 'transformers', 'lightning',"
        " 'rasterio', 'gradio', 'matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# --- SAM (segment-anything) with a tiny random model -----------------------------------------


def tiny_sam(dim: int = 32):  # noqa: ANN201
    """A segment-anything ``Sam`` with a 1-block ViT at the real 1024 input size."""
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            embed_dim=dim,
            depth=1,
            num_heads=1,
            out_chans=dim,
            window_size=8,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    )
    # Random up-convolutions give salt-and-pepper masks whose run-length encoding takes
    # seconds; zero weights give spatially flat masks, so the test stays fast.
    with torch.no_grad():
        for mod in model.mask_decoder.output_upscaling:
            if isinstance(mod, torch.nn.ConvTranspose2d):
                mod.weight.zero_()
    return model


SAM_CALLS: list[str] = []  # which registered builder ran, in order


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    E.register_sam_model_type("tiny32", lambda: SAM_CALLS.append("tiny32") or tiny_sam(32))
    E.register_sam_model_type("tiny16", lambda: SAM_CALLS.append("tiny16") or tiny_sam(16))
    # the file name says vit_h: the model type must come from model_type, never the name
    path = tmp_path_factory.mktemp("sam") / "sam_vit_h_4b8939.pth"
    torch.save(tiny_sam(32).state_dict(), path)
    return path


def test_sam_generator_plumbing(tiny_sam_checkpoint: Path) -> None:
    calls = SAM_CALLS
    gen = E.get_generator(
        "sam",
        checkpoint=tiny_sam_checkpoint,
        model_type="tiny32",
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert gen.params["model_type"] == "tiny32" and gen.params["input_size"] == 1024
    expected = hashlib.sha256(tiny_sam_checkpoint.read_bytes()).hexdigest()
    assert gen.checkpoint_sha256 == expected
    assert calls == []  # the model is built lazily, on the first image
    amg = gen._ensure_model()
    assert calls == ["tiny32"]
    seen = []
    original = amg.generate

    def spy(image):  # noqa: ANN001, ANN202
        seen.append(image.shape)
        return original(image)

    amg.generate = spy
    image = random_texture(60, 80, 3)
    masks = gen(image)
    assert seen == [(1024, 1024, 3)]  # upsampled to the paper's 1024 x 1024
    assert len(masks) >= 1
    for m in masks:
        assert m.dtype == bool and m.shape == (60, 80)
    labels = E.compute_entities(image, gen, 40)
    assert labels.shape == (60, 80) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, E.paint_label_map(masks, 40))


def test_sam_model_type_selection_and_errors(tiny_sam_checkpoint: Path, tmp_path: Path) -> None:
    assert E.get_generator("sam", checkpoint=tiny_sam_checkpoint).params["model_type"] == "vit_b"
    wrong = E.get_generator("sam", checkpoint=tiny_sam_checkpoint, model_type="tiny16")
    with pytest.raises(CheckpointError, match="model_type 'tiny16'") as info:
        wrong._ensure_model()
    assert "\n" not in str(info.value)
    assert "tiny16" in SAM_CALLS
    with pytest.raises(ConfigError, match="unknown SAM model_type 'vit_x'"):
        E.get_generator("sam", checkpoint=tiny_sam_checkpoint, model_type="vit_x")
    with pytest.raises(CheckpointError, match="not found") as info:
        E.get_generator("sam", checkpoint=tmp_path / "missing.pth")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        E.get_generator("sam")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load SAM checkpoint"):
        E.get_generator("sam", checkpoint=garbage, model_type="tiny32")._ensure_model()


def test_sam_through_the_cli(tiny_sam_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    from entitwist.entities.cli import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.fromarray(random_texture(40, 56, 5)).save(root / "images" / "a.png")
    argv = [str(root), "--generator", "sam", "--sam-checkpoint", str(tiny_sam_checkpoint)]
    argv += ["--model-type", "tiny32", "--points-per-side", "2", "--quiet"]
    argv += ["--param", "pred_iou_thresh=0", "--param", "stability_score_thresh=0"]
    assert main(argv) == 0
    store = E.EntityStore(next((root / "entities").iterdir()))
    assert store.directory.name.startswith("sam-")  # non-default parameters: hashed tag
    assert (
        store.manifest["checkpoint_sha256"]
        == hashlib.sha256(tiny_sam_checkpoint.read_bytes()).hexdigest()
    )
    assert store.manifest["params"]["model_type"] == "tiny32"
    labels = store.load("images/a")
    assert labels is not None and labels.shape == (40, 56)


# --- transformers SAM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=1,
            num_attention_heads=1,
            image_size=1024,
            patch_size=16,
            window_size=8,
            global_attn_indexes=[],
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=1024, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_dim=64,
            iou_head_hidden_dim=16,
        ),
    )
    model = SamModel(config)
    with torch.no_grad():  # flat masks, as for the tiny segment-anything model
        model.mask_decoder.upscale_conv1.weight.zero_()
        model.mask_decoder.upscale_conv2.weight.zero_()
    folder = tmp_path_factory.mktemp("hf") / "tiny-sam"
    model.save_pretrained(folder)
    SamProcessor(image_processor=SamImageProcessor()).save_pretrained(folder)
    return folder


def test_hf_sam_generator_plumbing(tiny_hf_sam: Path, tmp_path: Path) -> None:
    gen = E.get_generator(
        "hf-sam",
        model=tiny_hf_sam,
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        device="cpu",
    )
    assert gen.params["model"] == "tiny-sam"  # the folder's name, not where it sits
    weights = sorted(p for p in tiny_hf_sam.iterdir() if p.suffix == ".safetensors")
    assert weights and gen.checkpoint_sha256 is not None and len(gen.checkpoint_sha256) == 64
    pipe = gen._ensure_model()
    seen = []

    def spy(image, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(image.size)
        return pipe(image, **kwargs)

    gen._pipe = spy
    masks = gen(random_texture(60, 80, 4))
    assert seen == [(1024, 1024)]
    assert len(masks) >= 1
    for m in masks:
        assert m.dtype == bool and m.shape == (60, 80)
    with pytest.raises(CheckpointError, match="config.json"):
        E.get_generator("hf-sam", model=tmp_path)
    with pytest.raises(CheckpointError, match="offline"):
        E.get_generator("hf-sam", model="no-such-org/no-such-sam")._ensure_model()
