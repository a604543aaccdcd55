"""Every recipe and suite under ``recipes/`` is valid.

Recipes (every ``recipes/**/*.yaml`` outside ``recipes/suites/``):

- loads through :func:`sslbench.recipe.load_recipe` (strict: unknown keys and wrong types fail),
  including the ``method:`` section against the method's own ``Config`` dataclass;
- builds through :func:`sslbench.run.build_method`, the path ``sslbench run`` takes: the real
  backbone (``pretrained=False``, nothing downloaded) and the method's construction-time checks
  (backbone family, DINO crop / patch sizes, context grid, greedy stage split, MAE's ViT checks);
- the method supports the backbone's family, a ViT's patch size divides ``data.image_size``, and
  the run-time constraints ``build_method`` does not check hold (MoCo v2 queue and SplitBN vs the
  batch, known optimiser / protocols / baselines / data source);
- the published-hyperparameter recipes (``recipes/cifar10``, ``recipes/imagenet100``) follow
  their naming and header conventions (``<method>_<backbone>.yaml``, an ``Expected:`` line).

Suites (``recipes/suites/*.yaml``): parse through :func:`sslbench.suite.load_suite`, every
cell's recipe file exists (paths are relative to the repository root, where ``sslbench
benchmark`` runs), cells with overrides still load, and the suites of the published-recipe
folders list every recipe of their folder.

Backbones are created once per distinct (backbone config, image size) and deep-copied for each
recipe, which keeps the whole file at a few seconds.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import sslbench.run as run_mod
from sslbench.suite import load_suite
from sslbench.recipe import load_recipe
from sslbench.datasets import SOURCES
from sslbench.optim import OPTIMIZERS
from sslbench.schedules import scaled_lr
from sslbench.ssl import get_method

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SUITE_DIR = RECIPES / "suites"
ALL_YAML = sorted(RECIPES.rglob("*.yaml"))
SUITES = [p for p in ALL_YAML if SUITE_DIR in p.parents]
RECIPE_FILES = [p for p in ALL_YAML if SUITE_DIR not in p.parents]

# published-hyperparameter recipe folders: dataset conventions and backbone name suffixes
PUBLISHED = {
    "cifar10": {"data": "cifar10", "image_size": 32,
                "backbones": {"resnet18": "resnet18", "vit_tiny": "vit_tiny_patch16_224"}},
    "imagenet100": {"data": "imagefolder", "image_size": 224,
                    "backbones": {"resnet18": "resnet18", "vit_small": "vit_small_patch16_224"}},
}


def _rel(p: Path) -> str:
    return str(p.relative_to(RECIPES))


@functools.lru_cache(maxsize=None)
def _load(path: Path):
    """``load_recipe`` once per file (the tests below only read the config)."""
    return load_recipe(path)


_BACKBONES: dict[str, object] = {}
_real_create_backbone = run_mod.create_backbone


def _cached_create_backbone(cfg, image_size):
    """``create_backbone`` memoised on (backbone config, image size); returns a fresh copy, since
    methods modify their backbone (SplitBN conversion, frozen patch embedding, ...)."""
    key = json.dumps([OmegaConf.to_container(cfg, resolve=True), image_size], sort_keys=True)
    if key not in _BACKBONES:
        _BACKBONES[key] = _real_create_backbone(cfg, image_size)
    return copy.deepcopy(_BACKBONES[key])


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_recipes_and_suites_found():
    assert len(RECIPE_FILES) >= 28 and SUITES, (RECIPE_FILES, SUITES)
    for sub in PUBLISHED:
        assert list((RECIPES / sub).glob("*.yaml")), f"no recipes in recipes/{sub}"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_rel)
def test_recipe_is_valid(path: Path, monkeypatch):
    cfg = _load(path)  # strict load_recipe: unknown keys / bad types raise UserError
    method_cls = get_method(cfg.method.name)
    monkeypatch.setattr(run_mod, "create_backbone", _cached_create_backbone)
    method = run_mod.build_method(cfg)  # the method's own Config + construction-time validation
    backbone = method.backbone
    assert backbone.family in method_cls.families, (
        f"{cfg.method.name} does not support {backbone.family} ({cfg.backbone.name})")
    if backbone.family == "vit":
        patch = backbone.patch_size
        assert patch and cfg.data.image_size % patch == 0, (cfg.data.image_size, patch)
        if cfg.backbone.patch_size is not None:
            assert patch == cfg.backbone.patch_size

    # run-time constraints that build_method does not check
    batch = cfg.train.batch_size
    if cfg.method.name == "moco_v2":
        assert cfg.method.queue_size % batch == 0, "MoCo v2 queue must hold whole batches"
        assert batch % cfg.method.num_splits == 0, "SplitBN needs batch % num_splits == 0"
    assert cfg.optim.name in OPTIMIZERS
    assert scaled_lr(cfg.optim.lr, batch, cfg.optim.lr_scaling) > 0
    assert cfg.train.max_steps or cfg.train.epochs > 0
    assert cfg.eval.protocols and set(cfg.eval.protocols) <= set(run_mod.PROTOCOLS)
    for b in cfg.eval.baselines:
        assert b in run_mod.BASELINES or b.startswith("timm:"), b
    assert cfg.data.name in SOURCES
    if cfg.data.name != "embedded":
        assert cfg.data.path, "non-embedded data sources need data.path"


@pytest.mark.parametrize("path", [p for p in RECIPE_FILES if p.parent.name in PUBLISHED],
                         ids=_rel)
def test_published_recipe_conventions(path: Path):
    conv = PUBLISHED[path.parent.name]
    cfg = _load(path)
    method, _, suffix = path.stem.rpartition("_")
    if suffix not in conv["backbones"]:  # two-word suffixes: vit_tiny, vit_small
        method, _, first = method.rpartition("_")
        suffix = f"{first}_{suffix}"
    assert method == cfg.method.name, f"file {path.name} but method.name={cfg.method.name}"
    assert conv["backbones"].get(suffix) == cfg.backbone.name, (suffix, cfg.backbone.name)
    assert cfg.data.name == conv["data"] and cfg.data.image_size == conv["image_size"]
    assert cfg.data.ood_split is None
    if cfg.data.name == "cifar10":  # the standard shifts, evaluated where present locally
        assert {(o.name, o.kind) for o in cfg.data.ood_sets} == {
            ("stl10", "stl10"), ("cifar10_1", "cifar10_1"), ("cifar10_c", "cifar10_c")}
        assert not any(o.required for o in cfg.data.ood_sets)
    assert cfg.eval.protocols == ["linear", "knn"]
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert "Expected:" in text, f"{path.name}: header needs an 'Expected:' line"
    assert ("%" in text.split("Expected:", 1)[1].splitlines()[0]
            or "no published figure" in text), f"{path.name}: figure or 'no published figure'"


@pytest.mark.parametrize("path", SUITES, ids=_rel)
def test_suite_is_valid(path: Path):
    name, cells = load_suite(path)
    assert cells
    seen = set()
    for cell in cells:
        recipe = REPO / cell.recipe
        assert recipe.is_file(), f"{path.name}: cell recipe {cell.recipe} not found"
        assert SUITE_DIR not in recipe.parents, f"{path.name}: cell {cell.recipe} is a suite"
        key = (cell.recipe, tuple(cell.overrides))
        if cell.overrides and key not in seen:  # plain recipes are covered above
            load_recipe(recipe, [*cell.overrides, f"train.seed={cell.seed}"])
        seen.add(key)
    # paired differences need the random-init baseline at every seed a cell of its backbone runs
    backbone = {r: load_recipe(REPO / r).backbone.name for r in {c.recipe for c in cells}}
    random_seeds: dict[str, set[int]] = {}
    for cell in cells:
        if "random_init" in cell.baselines:
            random_seeds.setdefault(backbone[cell.recipe], set()).add(cell.seed)
    unpaired = sorted(cell.name for cell in cells if not cell.baselines
                      and backbone[cell.recipe] in random_seeds
                      and cell.seed not in random_seeds[backbone[cell.recipe]])
    assert not unpaired, f"{path.name}: no random-init baseline at the seed of {unpaired}"
    folder = RECIPES / name
    if name in PUBLISHED:  # the published-recipe suites run their whole folder
        listed = {(REPO / c.recipe).resolve() for c in cells}
        missing = [p.name for p in sorted(folder.glob("*.yaml")) if p.resolve() not in listed]
        assert not missing, f"{path.name} does not list {missing}"


def test_embedded_suite_is_compute_fair():
    """Every cell of the embedded suite on one backbone pretrains on the same number of images
    (batch x steps); a method that needs more is a separately named recipe outside the suite."""
    _, cells = load_suite(SUITE_DIR / "embedded.yaml")
    seen: dict[str, set[int]] = {}
    for cell in {c.recipe: c for c in cells}.values():
        cfg = load_recipe(REPO / cell.recipe, list(cell.overrides))
        assert cfg.train.max_steps, f"{cell.recipe}: the suite budget is set in steps"
        seen.setdefault(cfg.backbone.name, set()).add(cfg.train.batch_size * cfg.train.max_steps)
    assert seen and all(len(images) == 1 for images in seen.values()), seen
