"""``sslbench new-method NAME``: scaffold an external method plugin package.

The generated package ``sslbench-<name>`` (directory ``./sslbench-<name>`` unless ``--dir``)
registers its method through the ``sslbench.methods`` entry point, so once it is installed with
``pip install -e`` every sslbench command finds it::

    sslbench-<name>/
        pyproject.toml                 # setuptools, dependency sslbench, the entry point
        README.md                      # implement -> test -> run -> submit
        sslbench_<name>/__init__.py    # a runnable SimCLR-like placeholder; TODOs mark the loss
        tests/test_<name>.py           # the conformance kit (assert_conforms) + loss tests
        recipes/embedded.yaml          # quickstart-sized recipe for the embedded benchmark

The placeholder passes the conformance kit as generated; ``examples/plugin_method`` (Barlow
Twins) is a finished example of the same layout.
"""
from __future__ import annotations

import importlib.util
import keyword
import re
from pathlib import Path
from string import Template
from typing import Optional

from .errors import UserError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def class_name(name: str) -> str:
    """``my_method`` -> ``MyMethod`` (the generated class)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Method"


def validate_name(name: str) -> None:
    """Raise a one-line :class:`UserError` unless ``name`` can be a new method's name."""
    suggestion = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") or "my_method"
    if suggestion[0].isdigit():
        suggestion = "m_" + suggestion
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UserError(f"method name '{name}' is not a valid Python identifier; use lowercase "
                        f"letters, digits and underscores, starting with a letter "
                        f"(e.g. '{suggestion}')")
    if name != name.lower():
        raise UserError(f"method name '{name}' must be lowercase; use '{suggestion}'")
    if not _NAME_RE.match(name):
        raise UserError(f"method name '{name}' must start with a lowercase letter and contain "
                        f"only a-z, 0-9 and '_' (e.g. '{suggestion}')")
    from .ssl import METHODS

    if name in METHODS:
        raise UserError(f"method '{name}' is already registered ({METHODS.origin(name)}); "
                        f"choose another name, e.g. '{name}_v2'")
    if importlib.util.find_spec(f"sslbench_{name}") is not None:
        raise UserError(f"a Python package 'sslbench_{name}' is already installed; choose "
                        f"another name, e.g. '{name}_v2'")


def scaffold(name: str, directory: Optional[str | Path] = None) -> Path:
    """Write the plugin package for method ``name`` into ``directory``; return the directory.

    Raises:
        UserError: bad name (see :func:`validate_name`) or the directory already exists.
    """
    validate_name(name)
    root = Path(directory) if directory else Path(f"sslbench-{name}")
    if root.exists():
        raise UserError(f"{root} already exists; remove it or pass another directory with --dir")
    values = {"name": name, "cls": class_name(name), "pkg": f"sslbench_{name}",
              "dist": f"sslbench-{name}"}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        ".gitignore": GITIGNORE,
        f"sslbench_{name}/__init__.py": MODULE,
        f"tests/test_{name}.py": TESTS,
        "recipes/embedded.yaml": RECIPE,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return root


# -- templates (string.Template: $name, $cls, $pkg, $dist) --------------------------------------

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "The $name self-supervised method for sslbench."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["sslbench"]

[project.optional-dependencies]
test = ["pytest>=8"]

# sslbench finds the method through this entry point once the package is installed.
[project.entry-points."sslbench.methods"]
$name = "$pkg:$cls"

[tool.setuptools]
packages = ["$pkg"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

GITIGNORE = '''\
__pycache__/
*.egg-info/
runs/
wandb/
'''

MODULE = '''\
"""$cls: TODO one line on what the method does.

TODO cite the paper: Authors. Title. Venue Year. https://arxiv.org/abs/...
     Official code: https://github.com/...

TODO list every deviation from the paper (image size, projector width, augmentations,
optimiser, loss scaling...) and why.

As generated, this is a working SimCLR-like placeholder (two augmented views, an MLP projector,
the NT-Xent loss with negatives gathered across processes) so that the package installs, runs
and passes ``sslbench check-method $name`` before you change anything. Replace the parts marked
TODO with your method. The contract is documented in ``sslbench/ssl/base.py``; the method is
registered by the ``sslbench.methods`` entry point in ``pyproject.toml`` once installed, and by
its ``@register_method`` decorator when this file is loaded directly (``--plugins FILE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sslbench.ssl import SSLMethod, StepInfo, register_method
from sslbench.ssl.heads import mlp_head
from sslbench.ssl.simclr import nt_xent_loss
from sslbench.views import simclr_view, to_float

__all__ = ["$cls", "method_loss"]


def method_loss(z1: Tensor, z2: Tensor, cfg) -> Tensor:
    """TODO your loss on the (n, D) projections of the two views of the same n images.

    Placeholder: SimCLR's NT-Xent. Under DDP each process sees only its local n images; gather
    what the loss needs from the other processes with ``sslbench.distributed.gather_with_grad``
    (with gradient) or ``gather_no_grad``, as ``nt_xent_loss`` does, so that the loss is the one
    of the global batch. Compute it in fp32 (the forward runs under autocast).
    """
    return nt_xent_loss(z1.float(), z2.float(), cfg.temperature)


@register_method("$name")  # so that `plugins: [this file]` works too, not only the entry point
class $cls(SSLMethod):
    """TODO one line: what $name optimises."""

    families = ("resnet", "vit")  # TODO the backbone families it supports
    paper = "TODO Authors et al., Venue Year"
    # small sizes for the conformance kit's tiny backbones; never used for real runs
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32}

    @dataclass
    class Config:
        """Hyper-parameters (paper defaults), set from the recipe's ``method:`` section."""

        temperature: float = 0.2  # TODO your hyper-parameters
        proj_hidden_dim: int = 512
        proj_dim: int = 128
        crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
        color_strength: float = 0.5
        flip_p: float = 0.5

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        # TODO your heads (predictors, momentum encoders: frozen copies with requires_grad=False)
        # (the base class sets self.backbone and self.normalize: the dataset's mean / std)
        self.projector = mlp_head(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                  num_layers=2, batch_norm=True)
        self.augment = simclr_view(data.image_size, cfg.crop_scale, cfg.color_strength,
                                   flip_p=cfg.flip_p)

    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        """uint8 (n, 3, H, W) batch -> list of float views (TODO: your views / crops / masks)."""
        x = to_float(images)  # [0, 1] floats; never modify `images` in place
        return [self.normalize(self.augment(x)), self.normalize(self.augment(x))]

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        loss = method_loss(z1, z2, self.cfg)  # TODO your loss
        return {"loss": loss}  # add any detached scalars you want logged

    # Optional hooks (see sslbench/ssl/base.py): before_step (schedules), after_backward,
    # after_step (EMA teachers, queues), eval_backbone (e.g. a teacher), param_groups.
'''

TESTS = '''\
"""Tests of the $name plugin. Run ``pytest`` in this directory after ``pip install -e .``."""
from __future__ import annotations

import torch

from sslbench.conformance import assert_conforms
from $pkg import $cls, method_loss


def test_registered_through_the_entry_point():
    from sslbench.ssl import METHODS

    assert METHODS.get("$name") is $cls


def test_conforms():
    # every backbone family the method claims, on tiny backbones, on the CPU;
    # add ddp=True (or run `sslbench check-method $name`) for the 2-process DDP check
    assert_conforms("$name")


def test_loss_prefers_agreeing_views():
    # TODO replace with exact values of YOUR loss you can derive by hand (e.g. its value for
    # identical views, for unrelated views, its invariances), and a DDP check that it uses the
    # global batch.
    torch.manual_seed(0)
    cfg = $cls.Config()
    z = torch.randn(32, 16)
    agree = method_loss(z, z + 0.01 * torch.randn(32, 16), cfg)
    unrelated = method_loss(z, torch.randn(32, 16), cfg)
    assert torch.isfinite(agree) and float(agree) < float(unrelated)
'''

RECIPE = '''\
# $name on the embedded benchmark, quickstart-sized (2 CPU cores, a few minutes):
#   sslbench run recipes/embedded.yaml
# The method is found through the installed package's entry point (pip install -e .).
# TODO calibrate your method's hyper-parameters here and document each deviation from the paper.
method:
  name: $name
  temperature: 0.2
  proj_hidden_dim: 512
  proj_dim: 128
  crop_scale: [0.3, 1.0]   # digits are small: tiny crops are mostly background
  flip_p: 0.0              # mirrored digits change identity
backbone:
  name: test_resnet
  small_input: false
data:
  name: embedded
optim:
  name: adamw
  lr: 0.008                # x B/256
  weight_decay: 0.05
  warmup_epochs: 0.5
train:
  batch_size: 128
  max_steps: 320
  checkpoint_every: 100
  log_every: 20
eval:
  protocols: [linear, knn]
  baselines: [raw_pixels, random_init]
'''

README = '''\
# $dist

The `$name` self-supervised method as an sslbench plugin: the package registers it through the
`sslbench.methods` entry point (see `pyproject.toml`), so every `sslbench` command finds it once
the package is installed.

As generated, `$pkg/__init__.py` is a working SimCLR-like placeholder; the TODOs mark what to
replace. The Barlow Twins plugin in sslbench's `examples/plugin_method` is a finished example.

## Submit your method

1. Implement the method in `$pkg/__init__.py` (contract: `sslbench/ssl/base.py`): its
   `Config` (paper defaults), `families`, `make_views`, `forward` returning `{"loss": ...}`,
   the docstring citing the paper and listing every deviation.
2. Install it and check that sslbench sees it:

   ```bash
   pip install -e $dist
   sslbench methods                 # lists $name with source "plugin $pkg:$cls"
   ```

3. Test it: the conformance kit (tiny backbones, CPU, 2-process DDP) and your own tests.

   ```bash
   sslbench check-method $name
   pytest $dist/tests
   ```

4. Run the embedded benchmark with it, and render the board:

   ```bash
   sslbench run $dist/recipes/embedded.yaml   # records go to runs/leaderboard (local)
   sslbench leaderboard runs/leaderboard --format html --out board.html
   # for the committed board: add the recipe to a suite, commit, run it from a clean checkout
   sslbench benchmark SUITE.yaml && sslbench leaderboard submit runs/leaderboard
   ```

5. Open a pull request to the sslbench repository with the link to this package (its repository
   and the commit you ran) and the records `submit` added under `leaderboard/results/`.
   Records must come from real runs of committed code and are never edited by hand;
   `sslbench leaderboard validate` must pass.
'''
