"""The one entity-store resolver (entitwist.entities.resolve): which store a model trains
and is evaluated on, which generator runs at inference, and the one-line errors when the
data does not match the model, through the real `entitwist fit` command as well."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

import entitwist.entities as E
from entitwist.entities.cli import main as entities_main
from entitwist.errors import CheckpointError, ConfigError, DataError
from entitwist.models.registry import get_config

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic_tiny.yaml")


def fake_store(root: Path, tag: str, generator: str, k: int, **params) -> Path:
    folder = root / "entities" / tag
    folder.mkdir(parents=True)
    manifest = {"generator": generator, "params": params, "checkpoint_sha256": None}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "max_entities": k}))
    return folder


# ---------------------------------------------------------------------------- the spec
def test_spec_of_the_registered_models():
    paper = E.EntitySpec.of(get_config("entitwist_swinb_bert", pretrained=False))
    assert (paper.generator, dict(paper.params), paper.max_entities) == (
        "sam",
        {"model_type": "vit_b"},
        40,
    )
    tiny = E.EntitySpec.of(get_config("entitwist_tiny", pretrained=False))
    assert (tiny.generator, tiny.max_entities) == ("felzenszwalb", 40)
    # no SEG and no entity head: the model reads no entity maps, so it needs no store
    cfg = get_config("entitwist_swinb_bert_baseline", pretrained=False)
    assert not cfg.fusion.seg and E.EntitySpec.of(cfg) is None
    cfg = get_config("entitwist_tiny", pretrained=False, seg=False)  # the head still reads them
    assert E.EntitySpec.of(cfg) is not None
    off = get_config("entitwist_tiny", pretrained=False, seg=False, entity_head_layers=0)
    assert E.EntitySpec.of(off) is None


def test_mismatches_compare_generator_recorded_params_and_k():
    spec = E.EntitySpec("sam", 40, {"model_type": "vit_b"})
    ok = {"generator": "sam", "params": {"model_type": "vit_b", "input_size": 1024}}
    assert spec.mismatches({**ok, "max_entities": 40}) == []  # unrecorded params are free
    assert spec.mismatches({**ok, "max_entities": 10}) == ["K=10"]
    vit_h = {"generator": "sam", "params": {"model_type": "vit_h"}, "max_entities": 40}
    assert spec.mismatches(vit_h) == ["model_type='vit_h'"]
    felz = {"generator": "felzenszwalb", "params": {}, "max_entities": 40}
    assert spec.mismatches(felz) == ["generator 'felzenszwalb'", "model_type=None"]
    assert E.EntitySpec(None, 40).mismatches(felz) == []  # a model recording none: any


# ---------------------------------------------------------------------------- the resolver
def test_auto_picks_the_store_of_the_models_generator_and_k(tmp_path):
    felz = fake_store(tmp_path, "felzenszwalb", "felzenszwalb", 40)
    sam40 = fake_store(tmp_path, "sam", "sam", 40, model_type="vit_b")
    sam10 = fake_store(tmp_path, "sam-1a2b3c4d", "sam", 10, model_type="vit_b")
    fake_store(tmp_path, "sam-99999999", "sam", 40, model_type="vit_h")
    sam = E.EntitySpec("sam", 40, {"model_type": "vit_b"})
    assert E.resolve_store(tmp_path, "auto", sam) == sam40
    assert (
        E.resolve_store(tmp_path, "auto", E.EntitySpec("sam", 10, {"model_type": "vit_b"})) == sam10
    )
    assert E.resolve_store(tmp_path, "auto", E.EntitySpec("felzenszwalb", 40)) == felz
    # an explicit tag or folder is checked against the model all the same
    assert E.resolve_store(tmp_path, "sam", sam) == sam40
    assert E.resolve_store(tmp_path, str(sam40), sam) == sam40
    with pytest.raises(DataError, match=r"store has K=10"):
        E.resolve_store(tmp_path, "sam-1a2b3c4d", sam)
    with pytest.raises(DataError, match=r"store has generator 'felzenszwalb'"):
        E.resolve_store(tmp_path, str(felz), sam)


def test_no_matching_store_names_found_wanted_and_the_command(tmp_path):
    fake_store(tmp_path, "felzenszwalb", "felzenszwalb", 40)
    fake_store(tmp_path, "sam", "sam", 40, model_type="vit_b")
    with pytest.raises(DataError) as info:
        E.resolve_store(tmp_path, "auto", E.EntitySpec("sam", 50, {"model_type": "vit_b"}))
    msg = str(info.value)
    assert "\n" not in msg
    assert "wants sam (model_type=vit_b), K=50" in msg
    assert "felzenszwalb (felzenszwalb, K=40)" in msg and "sam (sam, model_type=vit_b, K=40)" in msg
    assert (
        f"`entitwist entities {tmp_path} --generator sam --sam-checkpoint sam_vit_b_01ec64.pth "
        "--model-type vit_b --max-entities 50`" in msg
    )
    with pytest.raises(DataError, match="found: none"):
        E.resolve_store(tmp_path / "empty", "auto", E.EntitySpec("felzenszwalb", 40))


def test_several_matches_none_entities_missing_and_broken_manifests(tmp_path):
    fake_store(tmp_path, "a", "felzenszwalb", 40)
    fake_store(tmp_path, "b", "felzenszwalb", 40, scale=50.0)
    spec = E.EntitySpec("felzenszwalb", 40)
    with pytest.raises(DataError, match=r"several entity stores .* match the model \(a, b\)"):
        E.resolve_store(tmp_path, "auto", spec)
    assert E.resolve_store(tmp_path, "b", spec).name == "b"
    # SEG on and no store is an error, never G = 0
    for entities in (None, "none"):
        with pytest.raises(DataError, match="uses entity priors .* data.entities is none"):
            E.resolve_store(tmp_path, entities, spec)
    assert E.resolve_store(tmp_path, None) is None  # the loaders on their own: fine
    with pytest.raises(DataError, match="not found"):
        E.resolve_store(tmp_path, "slic", spec)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        E.resolve_store(tmp_path, str(bare), spec)
    (tmp_path / "entities" / "a" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest .* is unreadable"):
        E.resolve_store(tmp_path, "auto", spec)


def test_the_named_command_builds_a_store_the_model_accepts(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "a.png")
    spec = E.EntitySpec("felzenszwalb", 7, {"scale": 50.0, "min_size": 80})
    with pytest.raises(DataError) as info:
        E.resolve_store(root, "auto", spec)
    command = str(info.value).split("`")[1]
    argv = shlex.split(command)
    assert argv[:2] == ["entitwist", "entities"] and "min_size=80" not in command  # default
    assert entities_main([*argv[2:], "--quiet"]) == 0
    store = E.resolve_store(root, "auto", spec)
    assert E.EntityStore(store).manifest["params"]["scale"] == 50.0
    assert int(E.EntityStore(store).load("a").max()) <= 7


# ---------------------------------------------------------------------------- inference
def test_inference_generator_is_the_models_own_or_a_reported_override(tmp_path):
    paper = get_config("entitwist_swinb_bert", pretrained=False)
    with pytest.raises(CheckpointError, match="give --sam-checkpoint sam_vit_b_01ec64.pth"):
        E.inference_generator(paper)
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x")
    got = E.inference_generator(paper, sam_checkpoint=ckpt)
    assert got.name == "sam" and got.params == {"model_type": "vit_b", "checkpoint": str(ckpt)}
    assert got.note is None
    other = E.inference_generator(paper, "felzenszwalb")
    assert other.name == "felzenszwalb" and other.params == {}
    assert "not sam the model was trained with" in other.note
    tiny = get_config("entitwist_tiny", pretrained=False, entity_params={"scale": 60.0})
    same = E.inference_generator(tiny)
    assert (same.name, same.params, same.note) == ("felzenszwalb", {"scale": 60.0}, None)
    with pytest.raises(ConfigError, match="unknown entity generator"):
        E.inference_generator(tiny, "nope")
    with pytest.raises(ConfigError, match="SAM entities only"):
        E.inference_generator(tiny, "slic", sam_checkpoint=ckpt)


def test_predictor_and_the_paper_model_need_a_sam_checkpoint():
    from entitwist.inference.predictor import Predictor

    class Net:
        config = get_config("entitwist_swinb_bert", pretrained=False)

        def to(self, device):
            return self

        def eval(self):
            return self

    p = Predictor(Net(), device="cpu")  # built fine: entities="auto" decides on first use
    with pytest.raises(CheckpointError, match="--sam-checkpoint"):
        p.get_entity_generator()
    q = Predictor(Net(), device="cpu", entity_generator="slic")
    assert q.get_entity_generator().name == "slic" and "not sam" in q.entity_note


# ---------------------------------------------------------------------------- K bound
def test_one_k_bound_everywhere(tmp_path):
    from entitwist.train.datamodule import check_data_args

    assert E.MAX_K == 255
    for k in (0, E.MAX_K + 1):
        with pytest.raises(ConfigError, match=f"1..{E.MAX_K}"):
            get_config("entitwist_tiny", pretrained=False, max_entities=k)
        with pytest.raises(ConfigError, match=f"1..{E.MAX_K}"):
            check_data_args(dataset="jsonl", root=tmp_path, max_entities=k)
        with pytest.raises(ConfigError, match=f"1..{E.MAX_K}"):
            E.paint_label_map([np.ones((2, 2), bool)], max_entities=k)
    assert get_config("entitwist_tiny", pretrained=False, max_entities=E.MAX_K)


# ---------------------------------------------------------------------------- `entitwist fit`
def make_scenes(root: Path, *entities_args: str) -> Path:
    from entitwist.data.synthetic import write_dataset

    write_dataset(root, 4, size=64, seed=0, expressions_per_scene=1, progress=False)
    for args in entities_args:
        assert entities_main([str(root), "--quiet", *shlex.split(args)]) == 0
    return root


def fit(root: Path, out: Path, *extra: str) -> int:
    from entitwist.cli import main as entitwist_main

    argv = ["fit", "--config", CONFIG, "--data.root", str(root), "--data.batch_size", "2"]
    argv += ["--trainer.default_root_dir", str(out), *extra]
    with mock.patch.object(sys, "argv", ["entitwist", *argv]):
        return entitwist_main(argv)


@pytest.fixture(scope="module")
def felz40(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("felz40"), "")  # felzenszwalb, K=40


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (  # the paper's priors with only a superpixel store
            "{img_size: 64, entity_generator: sam, entity_params: {model_type: vit_b}}",
            ["wants sam (model_type=vit_b), K=40", "found: felzenszwalb (felzenszwalb, K=40)",
             "--generator sam --sam-checkpoint sam_vit_b_01ec64.pth --model-type vit_b"],
        ),
        (  # K = 10 beside a K = 40 store
            "{img_size: 64, max_entities: 10}",
            ["wants felzenszwalb, K=10", "--generator felzenszwalb --max-entities 10"],
        ),
    ],
)  # fmt: skip
def test_fit_stops_on_a_store_that_does_not_match(felz40, tmp_path, capsys, overrides, needles):
    out = tmp_path / "run"
    with mock.patch(
        "entitwist.models.registry.create_model", side_effect=AssertionError("built a model")
    ):
        rc = fit(felz40, out, "--model.model_overrides", overrides)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("entitwist: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()


def test_fit_stops_with_seg_and_no_store(tmp_path, capsys):
    root = make_scenes(tmp_path / "bare")
    capsys.readouterr()
    for extra in ([], ["--data.entities", "null"]):
        out = tmp_path / "run"
        assert fit(root, out, "--model.model_overrides", "{img_size: 64}", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("entitwist: error:") and "\n" not in err, err
        assert "entitwist entities" in err and not out.exists()
    # a model without SEG (and without the entity head) needs no store and trains
    off = "{img_size: 64, seg: false, entity_head_layers: 0}"
    argv = ["--model.model_overrides", off, "--trainer.fast_dev_run", "1"]
    assert fit(root, tmp_path / "off", *argv) == 0


def test_fit_trains_on_the_matching_store_among_several(tmp_path, capsys):
    root = make_scenes(tmp_path / "sweep", "", "--max-entities 10")
    out = tmp_path / "run"
    argv = ["--model.model_overrides", "{img_size: 64, max_entities: 10}"]
    assert fit(root, out, *argv, "--trainer.fast_dev_run", "1") == 0, capsys.readouterr().err
    from entitwist.models.enti_twistnet import EntiTwistNet

    config = EntiTwistNet.from_pretrained(out / "export").config
    assert config.fusion.max_entities == 10 and config.fusion.entity_generator == "felzenszwalb"


def _no_checkpoint(out: Path) -> bool:
    return not list(out.rglob("*.ckpt")) and not (out / "export").exists()


def test_fit_stops_on_a_broken_manifest_and_on_maps_of_other_images(tmp_path, capsys):
    root = make_scenes(tmp_path / "broken", "")
    manifest = root / "entities" / "felzenszwalb" / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{this is not json")
    out = tmp_path / "run"
    capsys.readouterr()
    assert fit(root, out, "--trainer.max_epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("entitwist: error:") and "\n" not in err and "unreadable" in err
    assert _no_checkpoint(out)
    manifest.write_text(good)
    # one label map made for another image (another size): the store is not this data's
    from entitwist.data import load_dataset

    store = E.EntityStore(manifest.parent)
    key = next(iter(load_dataset("jsonl", root, "train", entities=None).images()))
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(store.path_for(key))
    assert fit(root, out, "--trainer.max_epochs", "1") == 2
    # this check runs when the datasets are built, after Lightning's own INFO lines
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("INFO")]
    assert len(lines) == 1 and lines[0].startswith("entitwist: error:"), lines
    err = lines[0]
    assert "is 48x32 but its image" in err and "made for other images" in err
    assert _no_checkpoint(out)
