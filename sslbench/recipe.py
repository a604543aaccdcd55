"""Loading a recipe: the one place that knows every owner of a name list a config value must
come from (data sources, OOD kinds, optimizers, protocols, methods and their ``Config``), so
that :mod:`sslbench.config` itself imports none of them. :func:`load_recipe` merges the recipe,
a saved config or overrides onto the schema and checks every value before anything reads data.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

# imported for what they publish (registry.publish): the names config values are checked against
from . import optim  # noqa: F401  (optimizer names)
from .config import RunConfig, check_domains, merge_source, parse_overrides
from .datasets import ood  # noqa: F401  (source and OOD-kind names)
from .errors import UserError
from .eval import protocol  # noqa: F401  (protocol names)
from .registry import load_plugin_file
from .ssl import get_method


def load_recipe(path: str | Path | None, overrides: list[str] | None = None,
                base: dict | None = None) -> DictConfig:
    """Load and validate a recipe (or a saved resolved config), then apply overrides.

    Returns a struct-mode DictConfig whose ``method`` node has been validated against the method's
    own ``Config`` dataclass (defaults filled in); every value is checked against its field's
    domain (:func:`check_domains`) before anything reads data.
    """
    schema = RunConfig()
    cfg = OmegaConf.structured(RunConfig)
    # The method section is validated separately against the method's own dataclass.
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.backbone.kwargs, False)  # free-form timm kwargs
    sources: list[tuple[Any, str]] = []
    if base is not None:
        sources.append((OmegaConf.create(base), "config"))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"recipe not found: {p}; pass a YAML file such as recipes/quickstart.yaml")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{p}: a recipe must be a mapping of sections (method:, backbone:, ...)")
        sources.append((OmegaConf.create(raw), str(p)))
    if overrides:
        sources.append((parse_overrides(overrides), "command line"))

    method_parts: list[tuple[Any, str]] = []
    origins: list[tuple[dict, str]] = []  # plain sources, to say where a bad value came from
    for src, where in sources:
        src = OmegaConf.to_container(src)
        origins.append((copy.deepcopy(src), where))
        m = src.pop("method", None)
        if m is not None:
            if not isinstance(m, dict):
                raise UserError(f"{where}: 'method' must be a mapping with at least 'name'")
            method_parts.append((m, where))
        cfg = merge_source(cfg, src, schema, where)

    method_dict: dict = {}
    for m, _ in method_parts:
        method_dict.update(m)
    name = method_dict.get("name", "simclr")
    for plugin in cfg.plugins:
        load_plugin_file(plugin)
    method_cls = get_method(name)
    mschema = OmegaConf.structured(method_cls.Config)
    OmegaConf.set_struct(mschema, True)
    mcfg = mschema
    for m, where in method_parts:
        m = {k: v for k, v in m.items() if k != "name"}
        mcfg = merge_source(mcfg, m, method_cls.Config(), f"{where} (method '{name}')",
                            key_prefix="method.")
    check_domains(cfg, mcfg, method_cls, origins, str(path) if path is not None else "config")
    OmegaConf.set_struct(cfg, False)
    cfg.method = OmegaConf.merge({"name": name}, mcfg)
    OmegaConf.set_struct(cfg, True)
    return cfg
