"""Projection / prediction heads shared by methods."""
from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
             batch_norm: bool = True, last_bn: bool = False, last_bn_affine: bool = True,
             bias: bool | None = None) -> nn.Sequential:
    """MLP ``in -> hidden (-> hidden)* -> out``.

    Hidden layers: Linear -> [BN] -> ReLU. Last layer: Linear [-> BN]. With BN the linear layers
    have no bias (it would be cancelled by the BN). This covers the SimCLR (official code: BN after
    every layer, last BN without centre), MoCo v2 (no BN) and MoCo v3 (last BN without affine)
    heads (docs/methods.md#simclr, #moco-v2, #moco-v3).
    """
    assert num_layers >= 1
    if bias is None:
        bias = not batch_norm
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(d, hidden_dim, bias=bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim, bias=bias and not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)
