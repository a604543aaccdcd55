"""A record's identity (sslbench.identity): what tells results apart, where ad-hoc results go,
when a suite cell counts as done, and how a run directory is bound to its config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_recipe
from sslbench.cli import main
from sslbench.identity import (LEGACY_DEFAULTS, check_name, config_diff, config_hash,
                               identity_hash, record_identity)
from sslbench.errors import UserError

PIXELS_KNN = ["eval", "tiny.yaml", "--backbone", "pixels", "--protocol", "knn", "-q"]


def _records(board: str = "runs/leaderboard") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(board).rglob("*.json"))]


def test_identity_hash_is_sha256_of_canonical_json():
    import hashlib

    ident = {"b": 1, "a": {"y": [1, 2], "x": "s"}}
    canon = '{"a":{"x":"s","y":[1,2]},"b":1}'
    assert identity_hash(ident) == hashlib.sha256(canon.encode()).hexdigest()[:16]


def test_config_hash_ignores_only_keys_that_cannot_change_a_number():
    base = {"train": {"seed": 0, "threads": 2, "max_steps": 4}, "logging": {"wandb": True},
            "leaderboard": {"dir": "a"}, "data": {"path": "/x", "image_size": 32}}
    same = json.loads(json.dumps(base))
    same["train"]["threads"], same["logging"]["wandb"], same["leaderboard"]["dir"] = 8, False, "b"
    same["data"]["path"] = "/elsewhere"  # the content fingerprint stands for the data
    assert config_hash(base) == config_hash(same)
    other = json.loads(json.dumps(base))
    other["train"]["max_steps"] = 5
    assert config_hash(base) != config_hash(other)
    assert config_diff(base, other) == {"train.max_steps": (4, 5)}


def test_a_key_added_at_its_legacy_value_keeps_the_identity():
    """A switch added with a default that reproduces the earlier behaviour does not make earlier
    records (and finished runs) different results; any other value does."""
    old = {"method": {"name": "greedy", "temperature": 0.1}, "train": {"seed": 0}}
    assert LEGACY_DEFAULTS["method.bn_per_view"] is False
    new = json.loads(json.dumps(old))
    new["method"]["bn_per_view"] = False
    assert config_hash(new) == config_hash(old) and config_diff(old, new) == {}
    for other in (True, 0):  # only the listed value, of its type, is dropped
        new["method"]["bn_per_view"] = other
        assert config_hash(new) != config_hash(old)
        assert config_diff(old, new) == {"method.bn_per_view": (None, other)}


def test_committed_greedy_records_stay_done_under_the_bn_per_view_switch():
    """The board's greedy rows were run before `method.bn_per_view` existed: the resolved config
    of today's code (the key at its default, false) has the identity they were written with, and
    so has the record's config with the key taken out (a record from before the switch)."""
    from sslbench.config import to_dict
    from sslbench.recipe import load_recipe

    paths = sorted((REPO / "leaderboard" / "results").rglob("greedy_resnet__*.json"))
    assert paths, "expected committed greedy_resnet records"
    r = json.loads(paths[0].read_text())
    before = json.loads(json.dumps(r["config"]))
    before["method"].pop("bn_per_view", None)
    assert config_hash(before) == r["identity"]["config_sha256"]
    cfg = to_dict(load_recipe(REPO / "recipes" / "embedded" / "greedy_resnet.yaml",
                              [f"train.seed={r['seed']}"]))
    assert cfg["method"]["bn_per_view"] is False
    assert config_diff(r["config"], cfg) == {}
    assert config_hash(cfg) == r["identity"]["config_sha256"]


def test_record_identity_fields():
    rec = {"method": "simclr", "backbone": "b", "protocol": "linear", "seed": 1, "eval_seed": 2,
           "recipe": {"name": "r"}, "protocol_settings": {"label_fraction": 0.1, "C": 1.0}}
    ident = record_identity(rec, {"name": "embedded", "fingerprint": "f" * 16}, {"a": 1})
    assert ident["settings"] == {"label_fraction": 0.1}  # chosen settings are results, not id
    assert (ident["recipe"], ident["seed"], ident["eval_seed"]) == ("r", 1, 2)


@pytest.mark.parametrize("bad", ["", ".", "..", ".hid", "../x", "a/b", "/tmp/x", "a b",
                                 "x" * 129, "a\nb", None])
def test_check_name_refuses_unsafe_names(bad):
    with pytest.raises(UserError):
        check_name(bad, "name")


@pytest.mark.parametrize("good", ["quickstart", "moco_v2_resnet", "vit_tiny_patch16_224.augreg",
                                  "a-b+c"])
def test_check_name_accepts_plain_names(good):
    assert check_name(good, "name") == good


@pytest.mark.slow
def test_ad_hoc_results_stay_out_of_the_committed_board():
    write_recipe(Path("tiny.yaml"))
    Path("leaderboard/results").mkdir(parents=True)  # a checkout's committed board
    assert main(PIXELS_KNN) == 0
    assert not list(Path("leaderboard/results").rglob("*.json"))
    recs = _records()
    assert len(recs) == 1 and recs[0]["schema_version"] == 2
    assert recs[0]["identity_hash"] == identity_hash(recs[0]["identity"])
    assert recs[0]["identity"]["dataset"]["name"] == "embedded"


@pytest.mark.slow
def test_an_override_makes_a_different_record_and_a_rerun_replaces_its_own():
    write_recipe(Path("tiny.yaml"))
    assert main(PIXELS_KNN) == 0
    assert main(PIXELS_KNN) == 0  # same identity: replaces its file
    assert len(_records()) == 1
    assert main([*PIXELS_KNN, "eval.knn.k=5"]) == 0  # an override is part of the identity
    recs = _records()
    assert len(recs) == 2
    assert len({r["identity"]["config_sha256"] for r in recs}) == 2
    assert sorted(r["protocol_settings"]["k"] for r in recs) == [5, 20]


def _image_folder(root: Path, shade: int) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for c, colour in (("a", (shade, 0, 0)), ("b", (0, shade, 0))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(12):
                Image.new("RGB", (8, 8), tuple(min(255, v + i) for v in colour)).save(
                    d / f"{i}.png")


@pytest.mark.slow
def test_two_datasets_of_one_loader_kind_make_two_records():
    write_recipe(Path("tiny.yaml"), {"data": {"ood_split": None}})
    _image_folder(Path("one"), 100)
    _image_folder(Path("two"), 200)
    for path in ("one", "two"):
        assert main([*PIXELS_KNN, "data.name=imagefolder", f"data.path={path}",
                     "eval.knn.k=3"]) == 0
    recs = _records()
    assert len(recs) == 2
    fingerprints = {r["identity"]["dataset"]["fingerprint"] for r in recs}
    assert len(fingerprints) == 2


SUITE = """name: mini
seeds: [0]
cells: [tiny.yaml]
baselines:
  - recipe: tiny.yaml
    kinds: [raw_pixels]
"""


@pytest.mark.slow
def test_suite_done_check_matches_full_identity(capsys):
    write_recipe(Path("tiny.yaml"), {"train": {"max_steps": 2, "batch_size": 32},
                                     "eval": {"protocols": ["knn"]}})
    Path("suite.yaml").write_text(SUITE)

    def status(*extra: str) -> list[str]:
        capsys.readouterr()
        assert main(["benchmark", "suite.yaml", "--dry-run", "-q", *extra]) == 0
        return [line.split()[-1] for line in capsys.readouterr().out.splitlines()]

    # records of the same cells in another directory (e.g. the committed board) do not count
    assert main(["benchmark", "suite.yaml", "-q", "leaderboard.dir=elsewhere"]) == 0
    assert status() == ["todo", "todo"]
    assert status("leaderboard.dir=elsewhere") == ["done", "done"]
    # a changed config is a different cell result: todo again
    assert status("leaderboard.dir=elsewhere", "eval.knn.k=7") == ["todo", "todo"]


@pytest.mark.slow
def test_run_reuses_a_finished_run_with_the_same_config(capsys):
    write_recipe(Path("tiny.yaml"), {"train": {"max_steps": 2, "batch_size": 32},
                                     "eval": {"protocols": ["knn"], "baselines": []}})
    assert main(["run", "tiny.yaml", "--out", "runs/a", "-q"]) == 0
    weights = Path("runs/a/backbone.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["run", "tiny.yaml", "--out", "runs/a"]) == 0
    assert "reusing it" in capsys.readouterr().err
    assert Path("runs/a/backbone.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_failed_run_continues_with_a_lower_lr_and_records_the_change(capsys):
    write_recipe(Path("tiny.yaml"), {"train": {"max_steps": 4, "batch_size": 32,
                                               "checkpoint_every": 1},
                                     "eval": {"protocols": ["knn"], "baselines": []}})
    assert main(["pretrain", "tiny.yaml", "--out", "runs/a", "optim.lr=1e30", "-q"]) == 1
    info = json.loads(Path("runs/a/run.json").read_text())
    assert info["status"] == "failed"
    # another change than the remedy is still refused
    assert main(["pretrain", "runs/a", "optim.lr=0.01", "train.max_steps=9", "-q"]) == 2
    assert main(["pretrain", "runs/a", "optim.lr=0.01", "-q"]) == 0
    info = json.loads(Path("runs/a/run.json").read_text())
    assert info["status"] == "done"
    assert info["pretrain"]["config_changes"][0]["changes"] == {"optim.lr": [1e30, 0.01]}
    assert yaml.safe_load(Path("runs/a/config.yaml").read_text())["optim"]["lr"] == 0.01


@pytest.mark.slow
def test_quickstart_twice_in_a_clone_leaves_git_status_clean(tmp_path, monkeypatch):
    """Everything a run writes inside a checkout (runs, results, local board, W&B) is ignored by
    git; the committed board is not touched. Shortened quickstart (2 steps, k-NN only)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    monkeypatch.chdir(clone)
    monkeypatch.delenv("WANDB_DIR", raising=False)  # W&B files go where a user's would
    for _ in range(2):
        assert main(["run", "recipes/quickstart.yaml", "train.max_steps=2", "eval.protocols=[knn]",
                     "data.renders_per_test_glyph=2", "-q"]) == 0
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout
    assert status == ""
    assert len(list(Path("runs/leaderboard/results").rglob("*.json"))) == 3
