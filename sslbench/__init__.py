"""sslbench: self-supervised pretraining benchmark suite.

Layout, by role (lowest layer first; ``tests/test_layers.py`` holds the order and fails on an
import against it):

- helpers: ``errors``, ``utils`` (atomic writes), ``identity`` (record identity, safe names),
  ``registry`` (name registries, plugins), ``distributed``, ``checkpoint``, ``schedules``,
  ``tracking`` (W&B); ``config`` (the schema of a run and every default);
- building blocks: ``datasets/`` (one source per module), ``views`` (uint8 images -> normalised
  views), ``backbones/`` (timm models, the 32 px stems, weights), ``optim``;
- ``eval/``: one module per evaluation protocol, behind a registry (``eval/protocol.py``);
- ``ssl/``: one module per method, behind a registry (the contract is ``ssl/base.py``);
- ``leaderboard/``: the record schema, aggregation, and the Markdown / HTML / W&B renderers;
- jobs: ``recipe`` (load and check a recipe), ``engine`` (the pretraining loop), ``run`` (one run:
  pretrain, evaluate, record), ``suite`` (recipes x seeds, resumable);
- tools: ``conformance`` (the test kit for a new method), ``scaffold`` (``sslbench new-method``);
- ``cli`` (the command line).
"""
__version__ = "0.1.0"
