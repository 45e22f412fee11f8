"""Saving and loading through huggingface_hub: model card, hub ids from the cache, refusals.

The hub is never reached: hub ids are served from a hub cache laid out in ``tmp_path``
(``models--owner--name/{refs,snapshots}``, the layout huggingface_hub writes), and
``push_to_hub`` runs against a stand-in for ``HfApi`` that records what would be uploaded.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import entitwist
from entitwist.errors import CheckpointError
from entitwist.inference import Predictor
from entitwist.models.enti_twistnet import EntiTwistNet

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _model(seed: int) -> EntiTwistNet:
    torch.manual_seed(seed)
    return entitwist.create_model("entitwist_tiny").eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def models() -> tuple[EntiTwistNet, EntiTwistNet]:
    return _model(0), _model(1)


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("saved")
    for name, model in zip("ab", models):
        model.save_pretrained(base / name)
    return base / "a", base / "b"


@pytest.fixture(scope="module")
def hub_cache(saved, tmp_path_factory) -> Path:
    """A hub cache holding alice/tiny: main -> model a, tag v2 -> model b."""
    cache = tmp_path_factory.mktemp("hub_cache")
    repo = cache / "models--alice--tiny"
    for commit, folder in ((COMMIT_A, saved[0]), (COMMIT_B, saved[1])):
        shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_A)
    (repo / "refs" / "v2").write_text(COMMIT_B)
    return cache


def test_save_writes_the_files_and_loads_back_exactly(models, saved) -> None:
    model, folder = models[0], saved[0]
    names = {p.name for p in folder.iterdir()}
    assert names == {"config.json", "model.safetensors", "tokenizer", "README.md"}
    again = EntiTwistNet.from_pretrained(folder)
    assert _same_weights(again, model) and again.config == model.config
    assert not _same_weights(again, models[1])  # the comparison can fail


def test_model_card_metadata_and_sections(saved) -> None:
    card = ModelCard.load(saved[0] / "README.md")
    assert card.data.library_name == "entitwist"
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.license == "apache-2.0"
    assert {"entitwist", "referring-image-segmentation", "remote-sensing"} <= set(card.data.tags)
    assert card.data.eval_results is None and not card.data.get("datasets")
    text = card.text
    assert text.lstrip().startswith("# entitwist_tiny")
    for heading in ("## How to load", "## Intended use", "## Limitations"):
        assert heading in text
    assert "Predictor.from_pretrained" in text and "entitwist segment" in text
    assert "No training record" in text


def test_model_card_quotes_the_training_record(models, tmp_path) -> None:
    from entitwist.train.export import export_pretrained

    info = {
        "selected_on": "val",
        "monitor": "val/mIoU",
        "score": 0.8125,
        "epoch": 7,
        "epochs_run": 12,
        "dataset": "rrsisd",
    }
    target = export_pretrained(models[0], tmp_path / "export", info)
    assert json.loads((target / "training.json").read_text()) == info
    card = ModelCard.load(target / "README.md")
    assert card.data.datasets == ["rrsisd"]
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value) == ("mIoU", 0.8125)
    assert (result.dataset_name, result.dataset_split) == ("rrsisd", "val")
    assert result.task_type == "image-segmentation"
    assert "val/mIoU = 0.8125 at epoch 7 (12 epochs run, dataset rrsisd)" in card.text
    # saving again over the folder rewrites the card from the folder's record
    models[0].save_pretrained(target)
    assert ModelCard.load(target / "README.md").data.eval_results[0].metric_value == 0.8125


def test_hub_id_and_revision_load_from_the_cache_offline(models, hub_cache) -> None:
    a, b = models
    assert _same_weights(EntiTwistNet.from_pretrained("alice/tiny", cache_dir=hub_cache), a)
    by_tag = EntiTwistNet.from_pretrained("alice/tiny", revision="v2", cache_dir=hub_cache)
    assert _same_weights(by_tag, b)
    by_commit = EntiTwistNet.from_pretrained("alice/tiny", revision=COMMIT_B, cache_dir=hub_cache)
    assert _same_weights(by_commit, b)
    predictor = Predictor.from_pretrained(
        "alice/tiny", device="cpu", revision="v2", cache_dir=hub_cache, precision="32"
    )
    assert _same_weights(predictor.model, b)


def test_hub_id_not_cached_offline_fails_at_once(hub_cache, tmp_path) -> None:
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"not in the hub cache.*HF_HUB_OFFLINE=1") as err:
        EntiTwistNet.from_pretrained("nobody-xyz/not-a-model", cache_dir=tmp_path)
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not in the hub cache"):
        Predictor.from_pretrained("alice/tiny", revision="v9", cache_dir=hub_cache)
    with pytest.raises(CheckpointError, match="not in the hub cache"):
        EntiTwistNet.from_pretrained("alice/tiny", cache_dir=tmp_path, local_files_only=True)


def test_folders_with_pickles_or_without_safetensors_are_refused(saved, tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(saved[0], folder)
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickled weights \(pytorch_model.bin\)"):
        EntiTwistNet.from_pretrained(folder)
    (folder / "pytorch_model.bin").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        Predictor.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        EntiTwistNet.from_pretrained(tmp_path / "no" / "such" / "folder")


def test_push_to_hub_uploads_the_saved_files(models, monkeypatch) -> None:
    import huggingface_hub.hub_mixin as hub_mixin

    uploads: list[dict] = []

    class FakeApi:
        def __init__(self, token=None) -> None:
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            files = sorted(
                p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*")
            )
            uploads.append({"repo_id": repo_id, "files": files})
            card = ModelCard.load(Path(folder_path) / "README.md")
            uploads[-1]["library"] = card.data.library_name
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    url = models[0].push_to_hub("alice/tiny")
    assert url.endswith("/commit/1")
    (upload,) = uploads
    assert upload["repo_id"] == "alice/tiny" and upload["library"] == "entitwist"
    assert {"README.md", "config.json", "model.safetensors"} <= set(upload["files"])
    assert not [f for f in upload["files"] if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
