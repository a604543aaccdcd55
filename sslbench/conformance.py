"""Conformance kit: check an SSL method against the sslbench method contract.

``sslbench check-method NAME`` runs it from the command line; tests call
:func:`assert_conforms` (every built-in method does, in ``tests/test_ssl/test_methods.py``)::

    from sslbench.conformance import assert_conforms

    def test_my_method_conforms():
        assert_conforms("my_method")            # every backbone family it claims

Each check runs on the tiny timm backbones (``test_resnet``, ``test_vit``) and 32 real images
of the embedded benchmark, with the method's ``test_overrides`` applied, on the CPU:

``build``         the method builds on every family it lists in ``families``;
``views``         ``make_views`` turns a uint8 batch into float views of that batch size;
``finite_loss``   ``forward`` returns ``{"loss": finite scalar, ...}``;
``grad_backbone`` after ``backward`` some backbone parameter has a non-zero gradient;
``frozen``        no parameter with ``requires_grad=False`` (teachers, targets, momentum
                  encoders) receives a gradient, and a teacher returned by ``eval_backbone``
                  is frozen; ``param_groups`` holds exactly the trainable parameters;
``decreases``     six steps on one fixed batch lower the loss (skipped for methods whose loss
                  compares against a memory bank that changes every step);
``deterministic`` two builds under one seed give the same loss and the same weights after a step;
``resume``        state_dict + optimizer state → a fresh build → the identical next step;
``ddp``           two gloo processes wrapped in DistributedDataParallel as the engine does it,
                  each on half of the batch: a finite loss and identical parameters on both
                  ranks after the step (optional: ``ddp=False``).
"""
from __future__ import annotations

import datetime
import io
import math
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from .config import DataConfig
from .engine import train_step as engine_step
from .ssl import METHODS, StepInfo

TINY_BACKBONES = {"resnet": "test_resnet", "vit": "test_vit", "convnet": "test_convnext"}
BATCH = 32


@dataclass
class Check:
    name: str
    family: str
    ok: Optional[bool]  # None: skipped
    detail: str = ""

    def line(self) -> str:
        mark = {True: "ok", False: "FAIL", None: "skip"}[self.ok]
        return f"{self.family:<7} {self.name:<14} {mark:<5} {self.detail}"


# -- building blocks ----------------------------------------------------------------------------

def tiny_config(name: str, family: str, plugins: Sequence[str] = (), seed: int = 0):
    """The resolved run config the kit uses: tiny backbone, the method's ``test_overrides``."""
    from .recipe import load_recipe

    overrides = [f"method.name={name}", f"backbone.name={TINY_BACKBONES[family]}",
                 "optim.name=adamw", f"train.seed={seed}"]
    if family == "resnet":
        overrides.append("backbone.small_input=false")  # stock stem: fast on CPU
    overrides += [f"method.{k}={v}" for k, v in METHODS.get(name).test_overrides.items()]
    if plugins:
        overrides.append("plugins=[" + ",".join(plugins) + "]")
    return load_recipe(None, overrides)


def build(name: str, family: str, plugins: Sequence[str] = (), seed: int = 0):
    """(method, optimizer) as the engine builds them, with a fixed small lr."""
    from .optim import create_optimizer
    from .run import build_method

    cfg = tiny_config(name, family, plugins, seed)
    method = build_method(cfg)
    opt = create_optimizer(method.param_groups(0.0), cfg.optim)
    for g in opt.param_groups:
        g["lr"] = 1e-3
    return method, opt


def sample_images(n: int = BATCH) -> torch.Tensor:
    from .datasets.embedded import build_embedded

    return build_embedded(DataConfig())["train"].images[:n]


def train_step(method, opt, views, info, seed: int, model=None) -> float:
    """One optimisation step on fixed ``views`` (:func:`sslbench.engine.train_step`, hooks
    included), after seeding torch's RNG with ``seed``; returns the loss."""
    torch.manual_seed(seed)
    return float(engine_step(method, opt, info, views=views, model=model)["loss"].detach())


def _leaves(views: Any) -> list[torch.Tensor]:
    """The tensors of ``make_views``' output: a tensor, or a list / tuple / dict of them."""
    if torch.is_tensor(views):
        return [views]
    if isinstance(views, dict):
        views = list(views.values())
    if isinstance(views, (list, tuple)):
        return [t for v in views for t in _leaves(v)]
    return []


def split_views(views: Any, rank: int, world: int) -> Any:
    """This rank's contiguous share of every view tensor (leading dimension), as the engine's
    per-rank sampler would give it: for the same global batch, rank r holds slice r."""
    if torch.is_tensor(views):
        n = views.shape[0] // world
        return views[rank * n:(rank + 1) * n]
    if isinstance(views, dict):
        return {k: split_views(v, rank, world) for k, v in views.items()}
    if isinstance(views, (list, tuple)):
        return type(views)(split_views(v, rank, world) for v in views)
    raise TypeError(f"cannot split views of type {type(views).__name__}")


def _contiguous(views: Any) -> Any:
    if torch.is_tensor(views):
        return views.contiguous()
    if isinstance(views, dict):
        return {k: _contiguous(v) for k, v in views.items()}
    if isinstance(views, (list, tuple)):
        return type(views)(_contiguous(v) for v in views)
    return views


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> Optional[str]:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        return "state_dict keys differ"
    for k in sa:
        if not torch.equal(sa[k], sb[k]):
            return f"'{k}' differs"
    return None


# -- the checks ---------------------------------------------------------------------------------

@dataclass
class _Subject:
    """The method under test and what the checks hand on to each other."""

    name: str
    family: str
    plugins: Sequence[str]
    method: Any = None
    opt: Any = None
    views: Any = None
    loss0: Optional[float] = None
    twin: Optional[tuple[Any, Any]] = None  # a second build, stepped like ``method``

    def build(self, seed: int = 0):
        return build(self.name, self.family, self.plugins, seed)


_STEP0 = StepInfo(0, 8, 4)


def _c_build(s: _Subject) -> Optional[str]:
    s.method, s.opt = s.build()
    return None


def _c_views(s: _Subject) -> Optional[str]:
    x = sample_images()
    torch.manual_seed(0)
    views = s.method.make_views(x.clone())
    leaves = _leaves(views)
    if not leaves:
        return f"make_views returned {type(views).__name__} with no tensors"
    for i, v in enumerate(leaves):
        if not v.is_floating_point():
            return f"view {i} is not a float tensor"
        if v.shape[0] % BATCH:
            return f"view {i} has leading size {v.shape[0]}, not a multiple of {BATCH}"
    if not torch.equal(x, sample_images()):
        return "make_views modified its uint8 input in place"
    s.views = views
    return None


def _c_finite_loss(s: _Subject) -> Optional[str]:
    """The first half of a step, checked piece by piece; the gradients stay for the next two
    checks, and the weights are not stepped (``deterministic`` compares them)."""
    method = s.method
    torch.manual_seed(0)
    method.before_step(_STEP0)
    res = method(s.views, _STEP0)
    if not isinstance(res, dict) or "loss" not in res:
        return "forward must return a dict with a 'loss' entry"
    loss = res["loss"]
    if not torch.is_tensor(loss) or loss.ndim != 0:
        return "loss must be a scalar tensor"
    if not math.isfinite(float(loss.detach())):
        return f"loss is {float(loss.detach())}"
    s.loss0 = float(loss.detach())
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward(_STEP0)
    return None


def _c_grad_backbone(s: _Subject) -> Optional[str]:
    total = sum(float(p.grad.abs().sum()) for p in s.method.backbone.parameters()
                if p.grad is not None)
    return None if total > 0 else "no backbone parameter received a gradient"


def _c_frozen(s: _Subject) -> Optional[str]:
    method = s.method
    in_opt = {id(p) for g in s.opt.param_groups for p in g["params"]}
    leaks = [n for n, p in method.named_parameters()
             if p.grad is not None and (not p.requires_grad or id(p) not in in_opt)]
    if leaks:
        return f"parameters outside the optimiser received gradients: {leaks[:3]}"
    ev = method.eval_backbone()
    if ev is not method.backbone:
        trainable = [n for n, p in ev.named_parameters() if p.requires_grad]
        if trainable:
            return f"eval_backbone() is a teacher with trainable parameters: {trainable[:3]}"
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    if in_opt != trainable:
        return (f"the optimiser holds {len(in_opt)} tensors but {len(trainable)} are "
                f"trainable (param_groups must return exactly the trainable ones)")
    return None


def _c_deterministic(s: _Subject) -> Optional[str]:
    # a second build under the same seed, put through the very same operations as the method
    # in `finite_loss` (before_step + forward; MoCo's key encoders move inside forward): the
    # same loss and bit-identical parameters
    twin, twin_opt = s.twin = s.build()
    torch.manual_seed(0)
    twin.before_step(_STEP0)
    b = float(twin(s.views, _STEP0)["loss"].detach())
    if b != s.loss0:
        return f"same seed, different loss: {s.loss0} vs {b}"
    twin_params = dict(twin.named_parameters())
    for k, v in s.method.named_parameters():
        if not torch.equal(v, twin_params[k]):
            return f"two builds under one seed differ in '{k}'"
    return None


def _c_decreases(s: _Subject) -> Optional[str]:
    if METHODS.get(s.name).memory_bank_loss:
        return "skipped: memory-bank loss (changes every step)"
    losses = [train_step(s.method, s.opt, s.views, StepInfo(i, 8, 4), seed=i) for i in range(6)]
    if not all(math.isfinite(v) for v in losses):
        return f"non-finite loss: {losses}"
    return None if losses[-1] < losses[0] else f"loss did not decrease: {losses}"


def _c_resume(s: _Subject) -> Optional[str]:
    m, o = s.twin or s.build()
    for i in range(3):
        train_step(m, o, s.views, StepInfo(i, 8, 4), seed=i)
    buf = io.BytesIO()
    torch.save({"method": m.state_dict(), "opt": o.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    clone, clone_opt = s.build(seed=99)  # different init on purpose
    clone.load_state_dict(saved["method"])
    clone_opt.load_state_dict(saved["opt"])
    info = StepInfo(3, 8, 4)
    a = train_step(m, o, s.views, info, seed=123)
    b = train_step(clone, clone_opt, s.views, info, seed=123)
    if a != b:
        return f"next-step loss differs after reload: {a} vs {b}"
    return _states_equal(m, clone)


# (name, check, whether a failure stops the family's remaining checks), in running order
_CHECKS: list[tuple[str, Callable[[_Subject], Optional[str]], bool]] = [
    ("build", _c_build, True), ("views", _c_views, True), ("finite_loss", _c_finite_loss, True),
    ("grad_backbone", _c_grad_backbone, False), ("frozen", _c_frozen, False),
    ("deterministic", _c_deterministic, False), ("decreases", _c_decreases, False),
    ("resume", _c_resume, False)]


def _run_check(check: str, family: str, fn: Callable[[_Subject], Optional[str]],
               subject: _Subject) -> Check:
    """A check returns None (ok), a detail (failed) or "skipped: ..."; one that raises fails,
    with the error as the detail."""
    try:
        detail = fn(subject)
    except Exception as e:
        last = traceback.extract_tb(e.__traceback__)[-1]
        return Check(check, family, False, f"{type(e).__name__}: {e} "
                                           f"({os.path.basename(last.filename)}:{last.lineno})")
    if detail and detail.startswith("skipped"):
        return Check(check, family, None, detail)
    return Check(check, family, detail is None, detail or "")


def _check_family(name: str, family: str, plugins: Sequence[str]) -> list[Check]:
    subject = _Subject(name, family, plugins)
    out: list[Check] = []
    for check, fn, required in _CHECKS:
        out.append(_run_check(check, family, fn, subject))
        if required and out[-1].ok is False:
            break
    return out


def _ddp_worker(rank: int, world: int, port: int, cases: Sequence[tuple[str, str, Any]],
                plugins: Sequence[str], out) -> None:
    """Every case of ``cases`` (name, family, global views) in turn, in one process group."""
    import torch.distributed as dist

    from .registry import load_plugin_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank left waiting on a collective its peer never joins errors out instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    results = {}
    try:
        for p in plugins:
            load_plugin_file(p)
        for name, family, views in cases:
            try:
                method, opt = build(name, family, plugins)
                model = torch.nn.parallel.DistributedDataParallel(method)
                local = split_views(views, rank, world)
                loss = train_step(method, opt, local, StepInfo(0, 8, 4), seed=rank, model=model)
                results[(name, family)] = {
                    "loss": loss,
                    "params": {k: v.detach().clone() for k, v in method.named_parameters()}}
            except Exception as e:
                # a collective that failed on one rank would hang the other on the next case
                results[(name, family)] = {"error": f"{type(e).__name__}: {e}"}
                break
    except Exception as e:
        results[None] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        out[rank] = results
        dist.destroy_process_group()


def _ddp_verdict(family: str, res: list[dict]) -> Check:
    for r in res:
        if "error" in r:
            return Check("ddp", family, False, r["error"])
    if not all(math.isfinite(r["loss"]) for r in res):
        return Check("ddp", family, False, f"losses {[r['loss'] for r in res]}")
    for k, v in res[0]["params"].items():
        if not torch.allclose(v, res[1]["params"][k], atol=1e-6, rtol=0):
            return Check("ddp", family, False, f"ranks disagree on '{k}' after one step")
    return Check("ddp", family, True, "")


def check_ddp(cases: Sequence[tuple[str, str]], plugins: Sequence[str] = ()
              ) -> dict[tuple[str, str], Check]:
    """The ``ddp`` check of every (method, family) in ``cases``, all in one pair of gloo
    processes (starting the processes costs more than the steps themselves)."""
    import torch.multiprocessing as mp

    from .distributed import free_port
    from .registry import load_plugin_file

    for p in plugins:
        load_plugin_file(p)
    checks: dict[tuple[str, str], Check] = {}
    jobs = []
    for name, family in cases:
        try:
            method, _ = build(name, family, plugins)
            torch.manual_seed(0)
            jobs.append((name, family, _contiguous(method.make_views(sample_images()))))
        except Exception as e:
            checks[(name, family)] = Check("ddp", family, False, f"{type(e).__name__}: {e}")
    if jobs:
        try:
            result = mp.Manager().dict()
            mp.spawn(_ddp_worker, args=(2, free_port(), jobs, tuple(plugins), result),
                     nprocs=2, join=True)
            res = [result[0], result[1]]  # copy out of the Manager once
        except Exception as e:
            res = [{None: {"error": f"{type(e).__name__}: {e}"}}] * 2
        for name, family, _ in jobs:
            per_rank = [r.get((name, family)) or r.get(None)
                        or {"error": "not run: an earlier case failed"} for r in res]
            checks[(name, family)] = _ddp_verdict(family, per_rank)
    return {c: checks[c] for c in cases}


def check_method(name: str, families: Optional[Iterable[str]] = None, ddp: bool = True,
                 plugins: Sequence[str] = ()) -> list[Check]:
    """Run every check on every backbone family the method claims (or ``families``)."""
    from .errors import UserError
    from .registry import load_plugin_file

    for p in plugins:
        load_plugin_file(p)
    cls = METHODS.get(name)
    claimed = tuple(cls.families)
    fams = tuple(families or claimed)
    for f in fams:
        if f not in TINY_BACKBONES:
            raise UserError(f"unknown backbone family '{f}' (valid: resnet, vit)")
        if f not in claimed:
            raise UserError(f"method '{name}' does not claim the '{f}' family "
                            f"(it lists {', '.join(claimed)})")
    per_family = {f: _check_family(name, f, plugins) for f in fams}
    if ddp:
        built = [f for f in fams if per_family[f] and per_family[f][0].ok]
        ddp_checks = check_ddp([(name, f) for f in built], plugins)
    checks: list[Check] = []
    for f in fams:
        checks += per_family[f]
        if ddp:
            checks.append(ddp_checks.get((name, f))
                          or Check("ddp", f, None, "skipped: build failed"))
    return checks


def assert_conforms(name: str, family: Optional[str] = None, ddp: bool = False,
                    plugins: Sequence[str] = ()) -> list[Check]:
    """pytest helper: raise ``AssertionError`` listing every failed check."""
    checks = check_method(name, [family] if family else None, ddp=ddp, plugins=plugins)
    failed = [c for c in checks if c.ok is False]
    assert not failed, f"method '{name}' fails the contract:\n" + "\n".join(
        c.line() for c in failed)
    return checks
