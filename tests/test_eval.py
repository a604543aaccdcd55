"""Frozen-feature protocols (docs/methods.md#linear-probe, #k-nn) and their invariants."""
from __future__ import annotations

import torch

from sslbench.eval.features import extract
from sslbench.eval.knn import knn_predict, run_knn
from sslbench.eval.linear import TOL, carve_validation, fit_logreg, run_linear


def test_knn_k1_is_nearest_neighbour_label():
    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(50, 8, generator=g), torch.randint(0, 5, (50,), generator=g)
    test_x = torch.randn(20, 8, generator=g)
    pred = knn_predict(train_x, train_y, test_x, k=1, temperature=0.1, num_classes=5)
    cos = torch.nn.functional.normalize(test_x, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
    assert torch.equal(pred, train_y[cos.argmax(1)])


def test_knn_is_scale_invariant_and_weighted():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    test_x = torch.tensor([[1.0, 0.05]])
    # majority (T large) says class 1 (3 of 5), similarity weighting (T small) says class 0
    assert knn_predict(train_x, train_y, test_x, 5, 1e3, 2).item() == 1
    assert knn_predict(train_x, train_y, test_x, 5, 0.05, 2).item() == 0
    assert knn_predict(100 * train_x, train_y, 0.01 * test_x, 5, 0.05, 2).item() == 0


def test_knn_small_test_set_does_not_crash():
    m, s = run_knn({"train": (torch.randn(30, 4), torch.randint(0, 3, (30,))),
                    "test": (torch.randn(3, 4), torch.randint(0, 3, (3,)))}, 3, k=200,
                   temperature=0.1)
    assert 0 <= m["acc"] <= 1 and s["k"] == 200


def test_logreg_matches_sklearn_objective():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    fit = fit_logreg(x, y, 3, c=0.5, max_iter=500, tol=TOL)
    assert fit.converged
    w = fit.w
    sk = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    # multinomial weights are identifiable up to a per-feature shift across classes
    ours = w - w.mean(0, keepdim=True)
    theirs = torch.from_numpy(sk.coef_) - torch.from_numpy(sk.coef_).mean(0, keepdim=True)
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)


def test_linear_probe_chooses_c_on_validation_and_learns():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    def sample(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return centers[y] + torch.randn(n, 16, generator=g), y
    feats = {"train": sample(400), "val": sample(100), "test": sample(200), "ood": sample(100)}
    metrics, settings = run_linear(feats, 4, [1e-3, 1e-1, 10.0], max_iter=100)
    assert metrics["acc"] > 0.9 and metrics["ood_acc"] > 0.9
    assert settings["chosen_C"] in (1e-3, 1e-1, 10.0)
    assert settings["chosen_val_acc_by_C"][f"{settings['chosen_C']:g}"] == metrics["val_acc"]


def test_carve_validation_disjoint_and_by_group():
    labels = torch.arange(100) % 10
    groups = torch.arange(100) // 4
    tr, va = carve_validation(labels, groups, 0.2, seed=0)
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == 100
    assert set(groups[tr].tolist()).isdisjoint(groups[va].tolist())
    tr2, va2 = carve_validation(labels, None, 0.2, seed=1)
    assert len(va2) == 20 and set(tr2.tolist()).isdisjoint(va2.tolist())


def test_feature_extraction_leaves_backbone_untouched():
    from omegaconf import OmegaConf

    from sslbench.backbones import create_backbone
    from sslbench.config import BackboneConfig
    from sslbench.datasets import TensorImageDataset

    bb = create_backbone(OmegaConf.structured(BackboneConfig(name="test_resnet")), 32)
    bb.train()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    ds = TensorImageDataset(torch.randint(0, 255, (40, 3, 32, 32), dtype=torch.uint8),
                            torch.arange(40) % 4, ["a", "b", "c", "d"])
    x, y = extract(lambda im: bb(im.float() / 255), ds, torch.device("cpu"), 16, module=bb)
    assert x.shape == (40, bb.num_features) and torch.equal(y, ds.labels)
    assert bb.training  # mode restored
    after = bb.state_dict()
    for k, v in before.items():  # weights AND BN running stats / num_batches_tracked
        assert torch.equal(v, after[k]), k
