"""Extra OOD sets (data.ood_sets): STL-10, CIFAR-10.1, CIFAR-10-C and generic sources, on small
files written here in each format; relabelling into the training classes; skipped when absent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from sslbench.config import DataConfig, OODSetConfig
from sslbench.datasets.ood import CIFAR10_CLASSES, load_ood_sets
from sslbench.errors import UserError


def _cfg(*sets: OODSetConfig, image_size: int = 32):
    return OmegaConf.structured(DataConfig(name="cifar10", image_size=image_size,
                                           ood_sets=list(sets)))


def _write_stl10(root: Path, labels_1based: list[int]) -> np.ndarray:
    """torchvision's STL-10 binary layout; returns the images as (N, 96, 96, 3)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (len(labels_1based), 96, 96, 3), dtype=np.uint8)
    hwc[:, :10, :, 0] = 255  # a red band along the top rows: catches a transposed reader
    hwc[:, :10, :, 1:] = 0
    hwc.transpose(0, 3, 2, 1).tofile(folder / "test_X.bin")  # column-major per channel
    np.asarray(labels_1based, dtype=np.uint8).tofile(folder / "test_y.bin")
    return hwc


def test_stl10_maps_nine_classes_onto_cifar10_and_drops_monkey(tmp_path):
    # STL-10 labels (1-based): 1 airplane, 3 car, 8 monkey, 10 truck
    hwc = _write_stl10(tmp_path / "stl", [1, 3, 8, 10, 8])
    sets = load_ood_sets(_cfg(OODSetConfig(name="stl10", kind="stl10",
                                           path=str(tmp_path / "stl"))), CIFAR10_CLASSES,
                         quiet=True)
    ds = sets["stl10"]
    names = [CIFAR10_CLASSES[i] for i in ds.labels.tolist()]
    assert names == ["airplane", "automobile", "truck"]  # the monkeys are gone
    x, _ = ds.get_batch([0])
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.uint8
    top, bottom = x[0, :, :2].float().mean((1, 2)), x[0, :, -2:].float().mean((1, 2))
    assert top[0] > 240 and top[1] < 15  # the red band is at the top, not the left
    assert bottom[0] < 200
    # 96 px kept as is when asked
    big = load_ood_sets(_cfg(OODSetConfig(name="stl10", kind="stl10", path=str(tmp_path / "stl")),
                             image_size=96), CIFAR10_CLASSES, quiet=True)["stl10"]
    assert torch.equal(big.get_batch([1])[0][0], torch.from_numpy(hwc[1]).permute(2, 0, 1))


def test_cifar10_1_and_cifar10_c_severity_and_corruptions(tmp_path):
    rng = np.random.default_rng(1)
    d1 = tmp_path / "c101"
    d1.mkdir()
    x1 = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.save(d1 / "cifar10.1_v6_data.npy", x1)
    np.save(d1 / "cifar10.1_v6_labels.npy", np.array([0, 1, 2, 3, 4, 5]))
    dc = tmp_path / "c10c"
    dc.mkdir()
    labels = np.tile(np.arange(4), 5)  # 4 images per severity
    np.save(dc / "labels.npy", labels)
    for c, v in (("fog", 10), ("snow", 20)):
        arr = np.zeros((20, 32, 32, 3), dtype=np.uint8)
        for s in range(5):
            arr[4 * s:4 * (s + 1)] = v + s  # pixel value encodes corruption and severity
        np.save(dc / f"{c}.npy", arr)
    sets = load_ood_sets(_cfg(
        OODSetConfig(name="cifar10_1", kind="cifar10_1", path=str(d1)),
        OODSetConfig(name="c_fog3", kind="cifar10_c", path=str(dc), corruptions=["fog"],
                     severity=3),
        OODSetConfig(name="c_all5", kind="cifar10_c", path=str(dc))), CIFAR10_CLASSES,
        quiet=True)
    assert torch.equal(sets["cifar10_1"].get_batch([2])[0][0], torch.from_numpy(x1[2]).permute(2, 0, 1))
    assert sets["cifar10_1"].labels.tolist() == [0, 1, 2, 3, 4, 5]
    fog3, _ = sets["c_fog3"].get_batch(range(4))
    assert (fog3 == 12).all() and sets["c_fog3"].labels.tolist() == [0, 1, 2, 3]
    all5, _ = sets["c_all5"].get_batch(range(8))
    assert sorted({int(v) for v in all5.unique()}) == [14, 24]  # fog and snow at severity 5
    with pytest.raises(UserError, match="did you mean 'snow'"):
        load_ood_sets(_cfg(OODSetConfig(name="c", kind="cifar10_c", path=str(dc),
                                        corruptions=["snwo"])), CIFAR10_CLASSES, quiet=True)


def test_missing_sets_are_skipped_unless_required_and_names_are_checked(tmp_path, capsys):
    absent = OODSetConfig(name="stl10", kind="stl10", path=str(tmp_path / "nowhere"))
    assert load_ood_sets(_cfg(absent), CIFAR10_CLASSES) == {}
    assert "OOD set 'stl10' skipped" in capsys.readouterr().err
    absent.required = True
    with pytest.raises(UserError, match="not found"):
        load_ood_sets(_cfg(absent), CIFAR10_CLASSES, quiet=True)
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="name 'test' is taken"):
        load_ood_sets(_cfg(OODSetConfig(name="test", kind="stl10", path=str(tmp_path / "x"))),
                      CIFAR10_CLASSES, quiet=True)
    with pytest.raises(UserError, match="unknown kind 'stl01'.*stl10"):
        load_ood_sets(_cfg(OODSetConfig(name="s", kind="stl01", path=str(tmp_path / "x"))),
                      CIFAR10_CLASSES, quiet=True)


def test_generic_imagefolder_set_is_evaluated_by_every_protocol(tmp_path, monkeypatch):
    """End to end on the embedded benchmark: an ImageFolder OOD set named by digit folders
    (plus one class the benchmark lacks, and one mapped by class_map) adds ``<name>_acc``."""
    from conftest import write_recipe
    from sslbench.recipe import load_recipe
    from sslbench.run import evaluate, recipe_info

    root = tmp_path / "digits_ood" / "test"
    for cls in ("3", "7", "seven_b", "cat"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), (30 * i, 200, 60)).save(root / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", {
        "data": {"renders_per_train_glyph": 1, "renders_per_test_glyph": 1,
                 "ood_sets": [{"name": "folder", "kind": "imagefolder",
                               "path": str(tmp_path / "digits_ood"),
                               "class_map": {"seven_b": "7"}}]},
        "eval": {"batch_size": 256, "knn": {"k": 5}}, "leaderboard": {"dir": "lb"}})
    cfg = load_recipe(recipe)
    (rec,) = evaluate(cfg, recipe_info(recipe), "random_init", None, protocols=["knn"],
                      quiet=True)
    assert {"acc", "ood_acc", "folder_acc"} <= rec["metrics"].keys()
    sets = load_ood_sets(cfg.data, [str(d) for d in range(10)], quiet=True)
    assert sorted(sets["folder"].labels.tolist()) == [3, 3, 7, 7, 7, 7]  # no cats
