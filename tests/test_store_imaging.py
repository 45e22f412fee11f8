"""The entity store records the imaging (bands, stretch) its pictures were read with, and a
model whose ``config.imaging`` differs does not take it."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import entitwist.entities as E
from entitwist.config import ImagingConfig
from entitwist.entities.cli import main as entities_main
from entitwist.entities.store import DEFAULT_IMAGING, imaging_record, manifest_imaging
from entitwist.errors import DataError, InputError
from entitwist.models.registry import get_config


def dataset(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(root / "a.png")
    return root


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def spec_with(imaging: ImagingConfig) -> E.EntitySpec:
    config = get_config("entitwist_tiny", pretrained=False)
    config.fusion.seg = True
    config.fusion.entity_generator = "felzenszwalb"
    config.fusion.entity_params = {}
    config.fusion.max_entities = 40
    spec = E.EntitySpec.of(replace(config, imaging=imaging))
    assert spec is not None
    return spec


def test_imaging_record_normalises_the_options() -> None:
    assert imaging_record() == DEFAULT_IMAGING == {"bands": None, "stretch": None}
    assert imaging_record("4,3,2", "2,98") == {"bands": [4, 3, 2], "stretch": [2.0, 98.0]}
    assert imaging_record((4, 3, 2), (2, 98)) == imaging_record("4,3,2", "2,98")
    assert imaging_record("2", "auto") == {"bands": [2, 2, 2], "stretch": None}
    assert imaging_record(None, "none") == {"bands": None, "stretch": "none"}
    with pytest.raises(InputError):
        imaging_record("4,3", None)
    # a manifest of an older store (no imaging) was read with the defaults
    assert manifest_imaging({"generator": "felzenszwalb"}) == DEFAULT_IMAGING
    assert manifest_imaging({"imaging": {"bands": [3, 2, 1], "stretch": [1, 99]}}) == {
        "bands": [3, 2, 1],
        "stretch": [1.0, 99.0],
    }


def test_entities_command_records_the_imaging_and_keeps_stores_apart(tmp_path: Path) -> None:
    root = dataset(tmp_path / "d")
    assert entities_main([str(root), "--quiet"]) == 0
    assert entities_main([str(root), "--bands", "3,2,1", "--stretch", "none", "--quiet"]) == 0
    default = root / "entities" / "felzenszwalb"
    others = [p for p in (root / "entities").iterdir() if p != default]
    assert len(others) == 1 and others[0].name.startswith("felzenszwalb-")
    assert manifest(default)["imaging"] == {"bands": None, "stretch": None}
    assert manifest(others[0])["imaging"] == {"bands": [3, 2, 1], "stretch": "none"}
    # the maps were computed on the picture read that way (channels swapped: other maps
    # are possible, but each store holds its own map of the same image)
    assert E.EntityStore(others[0]).load("a") is not None
    # a store opened for other imaging refuses to mix
    gen = E.get_generator()
    with pytest.raises(DataError, match="imaging"):
        E.EntityStore(default, generator=gen, imaging=imaging_record("3,2,1", "none"))
    E.EntityStore(others[0], generator=gen, imaging=imaging_record("3,2,1", "none"))  # same


def test_resolver_matches_the_models_imaging(tmp_path: Path) -> None:
    root = dataset(tmp_path / "d")
    assert entities_main([str(root), "--quiet"]) == 0
    default = root / "entities" / "felzenszwalb"
    plain = spec_with(ImagingConfig())
    swapped = spec_with(ImagingConfig(bands=(3, 2, 1), stretch=(1.0, 99.0)))
    assert swapped.imaging == {"bands": [3, 2, 1], "stretch": [1.0, 99.0]}
    assert E.resolve_store(root, "auto", plain) == default
    with pytest.raises(DataError) as info:
        E.resolve_store(root, "felzenszwalb", swapped)
    message = str(info.value)
    assert "\n" not in message and "bands default" in message and "stretch auto" in message
    # the command in the message builds the store the model takes, beside the default one
    argv = shlex.split(message.split("`")[1])
    assert argv[-4:] == ["--bands", "3,2,1", "--stretch", "1,99"]
    assert entities_main([*argv[2:], "--quiet"]) == 0
    chosen = E.resolve_store(root, "auto", swapped)
    assert chosen is not None and chosen != default
    assert manifest(chosen)["imaging"] == {"bands": [3, 2, 1], "stretch": [1.0, 99.0]}
    assert E.resolve_store(root, "auto", plain) == default  # still the default one


def test_a_manifest_without_imaging_is_read_as_the_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "entities" / "felzenszwalb"
    folder.mkdir(parents=True)
    old = {"generator": "felzenszwalb", "params": {}, "checkpoint_sha256": None}
    (folder / "manifest.json").write_text(json.dumps({**old, "max_entities": 40}))
    assert E.resolve_store(tmp_path, "auto", spec_with(ImagingConfig())) == folder
    band = spec_with(ImagingConfig(bands=(1,)))
    assert band.mismatches(manifest(folder)) == ["bands default"]
    with pytest.raises(DataError, match="--bands 1,1,1"):
        E.resolve_store(tmp_path, "auto", band)
    # a spec without imaging (None) accepts any
    assert E.EntitySpec("felzenszwalb", 40).mismatches({**old, "max_entities": 40}) == []


def test_training_data_takes_the_store_read_with_the_models_imaging(tmp_path: Path) -> None:
    from entitwist.train.datamodule import ReferringDataModule

    root = dataset(tmp_path / "d")
    assert entities_main([str(root), "--quiet"]) == 0

    def data(read_options: dict) -> ReferringDataModule:
        return ReferringDataModule(
            dataset="jsonl",
            root=str(root),
            entity_generator="felzenszwalb",
            read_options=read_options,
        )

    plain = data(ImagingConfig().read_options())
    assert plain.entity_spec() == spec_with(ImagingConfig())
    assert plain.entity_store() == root / "entities" / "felzenszwalb"
    options = ImagingConfig(bands=(3, 2, 1), stretch="none").read_options()
    swapped = data(options)
    assert swapped.entity_spec() == spec_with(ImagingConfig(bands=(3, 2, 1), stretch="none"))
    with pytest.raises(DataError, match="--bands 3,2,1 --stretch none"):
        swapped.entity_store()
