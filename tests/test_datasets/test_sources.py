"""Tests for the data sources (cifar, imagefolder, hf) and their dispatch ``load_source``:
every format is built locally in tmp_path."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.datasets.base import ImageDataset, TensorImageDataset
from sslbench.datasets.cifar import load_cifar
from sslbench.datasets.hf import load_hf
from sslbench.datasets.imagefolder import load_imagefolder
from sslbench.datasets.sources import load_source
from sslbench.errors import UserError

datasets = pytest.importorskip("datasets")

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch):
    """Keep the HF arrow cache inside tmp_path and never touch the network."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _check_split(ds: ImageDataset, size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(ds, ImageDataset) and len(ds) == n
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    x, y = ds.get_batch(list(range(n)))
    assert x.dtype == torch.uint8 and x.shape == (n, 3, size, size)
    assert y.dtype == torch.int64 and torch.equal(y, ds.labels)
    return x, y


# --------------------------------------------------------------------------- CIFAR
def _write_cifar10(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{j}.png" for j in range(n)]}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)], "num_vis": 3072}, f)
    return written


def test_cifar10_roundtrip_and_resize(tmp_path):
    written = _write_cifar10(tmp_path)
    out = load_cifar(str(tmp_path), "cifar10", 32)
    assert set(out) == {"train", "test"}
    assert all(isinstance(d, TensorImageDataset) for d in out.values())
    x, y = _check_split(out["train"], 32, 20)
    expected = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert torch.equal(x, torch.from_numpy(expected.reshape(-1, 3, 32, 32)))
    assert y.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    xt, yt = _check_split(out["test"], 32, 4)
    assert torch.equal(xt, torch.from_numpy(written["test_batch"][0].reshape(-1, 3, 32, 32)))
    assert out["train"].classes == [f"c{k}" for k in range(10)]
    assert out["train"].name == "cifar10:train" and out["test"].name == "cifar10:test"

    # the batches folder itself is accepted, and resizing keeps labels
    small = load_cifar(str(tmp_path / "cifar-10-batches-py"), "cifar10", 16)
    xs, ys = _check_split(small["test"], 16, 4)
    assert torch.equal(ys, yt)
    assert abs(xs.float().mean() - xt.float().mean()) < 5  # resize preserves overall intensity


def test_cifar100_via_load_source(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = {s: np.full((3, 3072), v, dtype=np.uint8) for s, v in (("train", 7), ("test", 200))}
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data[split], "fine_labels": [0, 99, 42],
                         "coarse_labels": [0, 1, 2]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{k}" for k in range(100)],
                     "coarse_label_names": [f"k{k}" for k in range(20)]}, f)
    out = load_source("cifar100", str(tmp_path), 32)
    x, y = _check_split(out["test"], 32, 3)
    assert (x == 200).all() and y.tolist() == [0, 99, 42]
    assert len(out["train"].classes) == 100 and out["train"].classes[42] == "f42"
    assert out["train"].name == "cifar100:train"


def test_cifar_missing(tmp_path):
    with pytest.raises(UserError) as e:
        load_cifar(str(tmp_path), "cifar10", 32)
    msg = str(e.value)
    assert "\n" not in msg and "CIFAR-10 data not found" in msg and "cifar-10-batches-py" in msg


# --------------------------------------------------------------------------- ImageFolder
def _write_imagefolder(root: Path) -> None:
    specs = {
        "train": {"red": [("RGB", (40, 30)), ("L", (12, 12))],
                  "green": [("RGBA", (20, 50))], "blue": [("RGB", (8, 8))]},
        "test": {"blue": [("L", (64, 64)), ("RGB", (16, 16))], "green": [("RGB", (10, 20))]},
    }
    for split, by_class in specs.items():
        for cls, items in by_class.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i, (mode, size) in enumerate(items):
                colour = COLOURS[cls]
                if mode == "L":
                    colour = 128
                elif mode == "RGBA":
                    colour = (*COLOURS[cls], 255)
                Image.new(mode, size, colour).save(d / f"{i}.png")
    (root / "train" / "red" / "notes.txt").write_text("not an image")


def test_imagefolder_modes_sizes_and_mapping(tmp_path):
    _write_imagefolder(tmp_path)
    out = load_imagefolder(str(tmp_path), 24)
    assert set(out) == {"train", "test"}
    classes = ["blue", "green", "red"]
    assert out["train"].classes == classes and out["test"].classes == classes
    x, y = _check_split(out["train"], 24, 4)
    assert sorted(y.tolist()) == [0, 1, 2, 2]
    xt, yt = _check_split(out["test"], 24, 3)
    assert sorted(yt.tolist()) == [0, 0, 1]  # same mapping although the test split lacks "red"
    for ds in out.values():
        for path, label in zip(ds.paths, ds.labels.tolist()):
            assert Path(path).parent.name == classes[label]
    # solid colours survive decode + crop + resize exactly
    for img, path in zip(x, out["train"].paths):
        cls = Path(path).parent.name
        expected = (128, 128, 128) if Image.open(path).mode == "L" else COLOURS[cls]
        assert torch.equal(img, torch.tensor(expected, dtype=torch.uint8).view(3, 1, 1)
                           .expand(3, 24, 24))
    # single-item indexing returns one image
    img0, y0 = out["test"][0]
    assert img0.shape == (3, 24, 24) and y0.dtype == torch.int64
    assert out["train"].fingerprint() != out["test"].fingerprint()


def test_imagefolder_center_crop(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)  # 30 wide: left/right thirds black, middle white
    arr[:, 10:20] = 255
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "train" / "a" / "x.png")
    x, _ = load_imagefolder(str(tmp_path), 10)["train"].get_batch([0])
    assert (x == 255).all()  # only the centre square is kept


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="not found") as e:
        load_imagefolder(str(tmp_path / "nope"), 8)
    assert "\n" not in str(e.value)
    flat = tmp_path / "flat"
    (flat / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(flat / "cat" / "a.png")
    with pytest.raises(UserError, match="<split>/<class>/<image>") as e:
        load_imagefolder(str(flat), 8)
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no image files"):
        load_imagefolder(str(empty), 8)


# --------------------------------------------------------------------------- HuggingFace
def _hf_split(n: int, offset: int = 0):
    names = ["cat", "dog", "emu"]
    rng = np.random.default_rng(offset)
    imgs = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(n)]
    imgs[0] = Image.new("L", (20, 10), 77)
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names),
                                  "caption": datasets.Value("string")})
    labels = [(i + offset) % 3 for i in range(n)]
    ds = datasets.Dataset.from_dict({"img": imgs, "label": labels,
                                     "caption": [f"c{i}" for i in range(n)]}, features=features)
    return ds, imgs, labels


def test_hf_save_to_disk(tmp_path):
    train, imgs, labels = _hf_split(5)
    test, _, test_labels = _hf_split(3, offset=1)
    datasets.DatasetDict(train=train, test=test).save_to_disk(str(tmp_path / "saved"))
    out = load_hf(str(tmp_path / "saved"), 12, None, None, "hf")
    assert set(out) == {"train", "test"}
    assert out["train"].classes == ["cat", "dog", "emu"]
    x, y = _check_split(out["train"], 12, 5)
    assert y.tolist() == labels and out["test"].labels.tolist() == test_labels
    assert torch.equal(x[1], torch.from_numpy(np.array(imgs[1])).permute(2, 0, 1))
    assert (x[0] == 77).all()  # 20x10 greyscale -> cropped, resized, RGB
    assert out["train"].name.endswith(":train")
    # the same via load_source, with explicit keys and a different size
    out2 = load_source("hf", str(tmp_path / "saved"), 8, image_key="img", label_key="label")
    _check_split(out2["test"], 8, 3)


def test_hf_parquet_layouts(tmp_path):
    train, _, labels = _hf_split(4)
    test, _, test_labels = _hf_split(2, offset=2)
    single = tmp_path / "single.parquet"
    train.to_parquet(str(single))
    out = load_source("parquet", str(single), 12)
    assert list(out) == ["train"] and out["train"].labels.tolist() == labels
    assert out["train"].classes == ["cat", "dog", "emu"]
    _check_split(out["train"], 12, 4)

    by_name = tmp_path / "by_name"
    by_name.mkdir()
    train.to_parquet(str(by_name / "train-00000-of-00001.parquet"))
    test.to_parquet(str(by_name / "test.parquet"))
    out = load_source("parquet", str(by_name), 6)
    assert set(out) == {"train", "test"} and out["test"].labels.tolist() == test_labels
    _check_split(out["test"], 6, 2)

    by_dir = tmp_path / "by_dir"
    (by_dir / "train").mkdir(parents=True)
    (by_dir / "ood").mkdir()
    train.to_parquet(str(by_dir / "train" / "part0.parquet"))
    test.to_parquet(str(by_dir / "ood" / "part0.parquet"))
    out = load_source("parquet", str(by_dir), 6)
    assert set(out) == {"train", "ood"} and len(out["ood"]) == 2


def test_hf_string_labels_are_remapped(tmp_path):
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    for split, labs in (("train", ["zebra", "ant", "zebra"]), ("test", ["moth"])):
        features = datasets.Features({"image": datasets.Image(),
                                      "labels": datasets.Value("string")})
        ds = datasets.Dataset.from_dict({"image": [img] * len(labs), "labels": labs},
                                        features=features)
        (tmp_path / "pq").mkdir(exist_ok=True)
        ds.to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    out = load_source("parquet", str(tmp_path / "pq"), 4)
    assert out["train"].classes == ["ant", "moth", "zebra"] == out["test"].classes
    assert out["train"].labels.tolist() == [2, 0, 2] and out["test"].labels.tolist() == [1]
    x, _ = out["train"].get_batch([0])
    assert x[0, :, 0, 0].tolist() == [1, 2, 3]


def test_hf_imagefolder(tmp_path):
    _write_imagefolder(tmp_path / "imf")
    (tmp_path / "imf" / "train" / "red" / "notes.txt").unlink()
    out = load_source("hf_imagefolder", str(tmp_path / "imf"), 16)
    assert set(out) == {"train", "test"}
    assert out["train"].classes == out["test"].classes
    assert set(out["train"].classes) == {"blue", "green", "red"}
    x, y = _check_split(out["train"], 16, 4)
    xt, yt = _check_split(out["test"], 16, 3)
    green = out["train"].classes.index("green")
    assert (yt == green).sum() == 1 and (y == green).sum() == 1
    g = x[(y == green).nonzero()[0, 0]]
    assert g[:, 0, 0].tolist() == [0, 255, 0]


def test_hf_labels_without_decoding(tmp_path, monkeypatch):
    train, _, labels = _hf_split(3)
    train.save_to_disk(str(tmp_path / "one"))

    def boom(*a, **k):
        raise AssertionError("image decoded while reading labels")

    monkeypatch.setattr(datasets.Image, "decode_example", boom)
    out = load_hf(str(tmp_path / "one"), 8, None, None, "hf")
    assert list(out) == ["train"] and out["train"].labels.tolist() == labels


def test_hf_splits_with_different_classlabels_share_mapping(tmp_path):
    img = Image.new("RGB", (4, 4))
    for split, names, labs in (("train", ["cat", "dog"], [0, 1]), ("test", ["dog", "emu"], [0, 1])):
        ds = datasets.Dataset.from_dict(
            {"image": [img] * 2, "label": labs},
            features=datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(names=names)}))
        (tmp_path / "pq" / split).mkdir(parents=True)
        ds.to_parquet(str(tmp_path / "pq" / split / "0.parquet"))
    out = load_source("parquet", str(tmp_path / "pq"), 4)
    assert out["train"].classes == ["cat", "dog", "emu"] == out["test"].classes
    assert out["train"].labels.tolist() == [0, 1] and out["test"].labels.tolist() == [1, 2]


def test_lazy_datasets_pickle_for_workers(tmp_path):
    _write_imagefolder(tmp_path / "imf")
    train, _, _ = _hf_split(3)
    train.save_to_disk(str(tmp_path / "hf"))
    for ds in (load_imagefolder(str(tmp_path / "imf"), 8)["train"],
               load_hf(str(tmp_path / "hf"), 8, None, None, "hf")["train"]):
        clone = pickle.loads(pickle.dumps(ds))
        x, y = clone.get_batch(torch.tensor([2, 0]))
        x0, y0 = ds.get_batch([2, 0])
        assert torch.equal(x, x0) and torch.equal(y, y0) and x.shape == (2, 3, 8, 8)
        assert clone.fingerprint() == ds.fingerprint()
        sub = ds.subset(torch.tensor([1]))
        assert torch.equal(sub.get_batch([0])[0], ds.get_batch([1])[0])


# --------------------------------------------------------------------------- errors
def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_error_missing_path(tmp_path):
    for kind in ("cifar10", "imagefolder", "parquet", "hf_imagefolder", "hf"):
        with pytest.raises(UserError) as e:
            load_source(kind, str(tmp_path / "missing"), 32)
        msg = _one_line(e)
        assert "data.path" in msg and "not found" in msg and "missing" in msg
    with pytest.raises(UserError) as e:
        load_source("imagefolder", None, 32)
    assert "data.path" in _one_line(e)


def test_error_unknown_kind(tmp_path):
    with pytest.raises(UserError) as e:
        load_source("tfrecord", str(tmp_path), 32)
    msg = _one_line(e)
    assert "tfrecord" in msg and "imagefolder" in msg and "parquet" in msg


def test_error_missing_columns(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (4, 4))], "caption": ["x"]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(UserError) as e:
        load_source("hf", str(tmp_path / "nolabel"), 8)
    msg = _one_line(e)
    assert "label" in msg and "img" in msg and "caption" in msg
    with pytest.raises(UserError) as e:
        load_source("hf", str(tmp_path / "nolabel"), 8, image_key="pixels", label_key="caption")
    msg = _one_line(e)
    assert "pixels" in msg and "caption" in msg


def test_error_hub_name_offline():
    with pytest.raises(UserError) as e:
        load_source("hf", "sslbench-test/definitely-not-a-dataset", 8)
    msg = _one_line(e)
    assert "could not load HF dataset 'sslbench-test/definitely-not-a-dataset'" in msg
    assert "no network" in msg
