"""Bad inputs and faults through the real CLI (``sslbench.cli.main``), table-driven.

Each case starts from a copy of one prepared workspace (a finished tiny run ``runs/a``, an
unfinished one ``runs/b``, a results directory ``runs/leaderboard`` with the records of ``runs/a``
and a tiny recipe), applies its fault, runs one command and checks: the exit code, exactly one
line on stderr that names the problem, no traceback, and the SHA-256 of every file that existed
before the command unchanged (new files are allowed: a refused command may not create any in the
run or results directories, which the snapshot also checks for the run directories it names).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from conftest import write_recipe
from sslbench.cli import main

TINY = {"train": {"max_steps": 2, "batch_size": 32, "checkpoint_every": 1},
        "eval": {"protocols": ["knn"], "baselines": []}}


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """runs/a: finished 2-step run with its knn record; runs/b: the same run, unfinished (its
    final checkpoint kept, the backbone removed, status running)."""
    ws = tmp_path_factory.mktemp("ws")
    old = Path.cwd()
    os.chdir(ws)
    try:
        write_recipe(ws / "tiny.yaml", TINY)
        assert main(["run", "tiny.yaml", "--out", "runs/a", "-q"]) == 0
        shutil.copytree(ws / "runs/a", ws / "runs/b")
        (ws / "runs/b/backbone.safetensors").unlink()
        info = json.loads((ws / "runs/b/run.json").read_text())
        info["status"] = "running"
        (ws / "runs/b/run.json").write_text(json.dumps(info))
        write_recipe(ws / "moco.yaml", {**TINY, "method": {"name": "moco_v2", "queue_size": 64}})
    finally:
        os.chdir(old)
    return ws


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


# -- faults applied to the workspace copy before the command ---------------------------------

def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return apply


def _truncate(rel: str, keep: int = 100) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        p = ws / rel
        p.write_bytes(p.read_bytes()[:keep])
    return apply


def _edit_config(key: str, value) -> Callable[[Path], None]:
    def apply(ws: Path) -> None:
        p = ws / "runs/a/config.yaml"
        cfg = yaml.safe_load(p.read_text())
        section, name = key.split(".")
        cfg[section][name] = value
        p.write_text(yaml.safe_dump(cfg))
    return apply


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _bad_image_folder(ws: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = ws / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(20):
                Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(d / f"{i}.png")
    (ws / "imgs/train/a/7.png").write_bytes(b"not a png at all")


def _plugin(name: str) -> Callable[[Path], None]:
    src = f'''
from sslbench.ssl import register_method
from sslbench.ssl.simclr import SimCLR

@register_method({name!r})
class Evil(SimCLR):
    pass
'''
    return _write("evil_plugin.py", src)


def _suite(text: str) -> Callable[[Path], None]:
    return _write("suite.yaml", text)


def _hold_lock(ws: Path) -> None:
    from filelock import FileLock

    lock = FileLock(str(ws / "runs/a/.lock"))
    lock.acquire()
    _HELD.append(lock)


_HELD: list = []

BAD_RECORD = {"schema_version": 1, "kind": "measured", "method": "simclr"}

# (id, setup, argv, exit code, substrings of the one stderr line)
CASES: list[tuple[str, Optional[Callable[[Path], None]], list[str], int, list[str]]] = [
    # -- keys and values: checked when the recipe loads, before data is read
    ("unknown-section", None, ["run", "tiny.yaml", "trian.max_steps=4"], 2, ["trian"]),
    ("unknown-key", None, ["run", "tiny.yaml", "train.max_step=4"], 2, ["max_steps"]),
    ("wrong-type", None, ["run", "tiny.yaml", "train.batch_size=abc"], 2, ["train.batch_size"]),
    ("max-steps-0", None, ["run", "tiny.yaml", "train.max_steps=0"], 2, ["train.max_steps"]),
    ("max-steps-neg", None, ["run", "tiny.yaml", "train.max_steps=-5"], 2, ["train.max_steps"]),
    ("batch-neg", None, ["run", "tiny.yaml", "train.batch_size=-4"], 2, ["train.batch_size"]),
    ("batch-0", None, ["run", "tiny.yaml", "train.batch_size=0"], 2, ["train.batch_size"]),
    ("lr-0", None, ["run", "tiny.yaml", "optim.lr=0"], 2, ["optim.lr"]),
    ("lr-neg", None, ["run", "tiny.yaml", "optim.lr=-0.1"], 2, ["optim.lr"]),
    ("precision-fp8", None, ["run", "tiny.yaml", "train.precision=fp8"], 2, ["train.precision"]),
    ("knn-k-0", None, ["run", "tiny.yaml", "eval.knn.k=0"], 2, ["eval.knn.k"]),
    ("image-size-0", None, ["run", "tiny.yaml", "data.image_size=0"], 2, ["data.image_size"]),
    ("protocol-typo", None, ["run", "tiny.yaml", "eval.protocols=[linaer]"], 2, ["linear"]),
    ("baseline-typo", None, ["run", "tiny.yaml", "eval.baselines=[random]"], 2, ["random"]),
    ("optimizer-typo", None, ["run", "tiny.yaml", "optim.name=adam"], 2, ["adamw"]),
    ("source-typo", None, ["run", "tiny.yaml", "data.name=cifar"], 2, ["cifar10"]),
    ("cifar-no-download", None, ["run", "tiny.yaml", "data.name=cifar10", "data.path=nowhere",
                                 "data.download=false", "--out", "r"], 2, ["data.download=true"]),
    ("unlabeled-for-eval", None, ["run", "tiny.yaml", "data.train_split=unlabeled"], 2,
     ["no split 'unlabeled'"]),
    ("method-typo", None, ["run", "tiny.yaml", "method.name=simclrr"], 2, ["simclr"]),
    ("temperature-0", None, ["run", "tiny.yaml", "method.temperature=0"], 2, ["temperature"]),
    ("label-fraction-0", None, ["run", "tiny.yaml", "eval.label_fractions=[0]"], 2,
     ["label_fractions"]),
    ("val-fraction", None, ["run", "tiny.yaml", "eval.linear.val_fraction=1.5"], 2,
     ["val_fraction"]),
    ("workers-neg", None, ["run", "tiny.yaml", "data.num_workers=-1"], 2, ["num_workers"]),
    ("momentum", None, ["run", "tiny.yaml", "optim.momentum=1.5"], 2, ["optim.momentum"]),
    ("unknown-backbone", None, ["run", "tiny.yaml", "backbone.name=resnet181", "--out", "r"], 2,
     ["resnet181"]),
    ("mae-on-resnet", None, ["run", "tiny.yaml", "method.name=mae", "--out", "r"], 2, ["mae"]),
    ("patch-size", None, ["run", "tiny.yaml", "backbone.name=test_vit", "backbone.patch_size=5",
                          "--out", "r"], 2, ["patch"]),
    ("batch-over-data", None, ["pretrain", "tiny.yaml", "train.batch_size=100000", "--out", "r"],
     2, ["train.batch_size"]),
    ("no-equals", None, ["run", "tiny.yaml", "train.max_steps"], 2, ["train.max_steps"]),
    ("stray-argument", None, ["run", "tiny.yaml", "foo"], 2, ["foo"]),
    # -- recipes and names that become paths
    ("recipe-missing", None, ["run", "nope.yaml"], 2, ["nope.yaml"]),
    ("recipe-bad-yaml", _write("bad.yaml", "train: [1, 2\n"), ["run", "bad.yaml"], 2,
     ["invalid YAML"]),
    ("recipe-not-mapping", _write("list.yaml", "- 1\n- 2\n"), ["run", "list.yaml"], 2,
     ["mapping"]),
    ("recipe-hidden-name", _write(".hid.yaml", "train: {max_steps: 2}\n"), ["run", ".hid.yaml"],
     2, ["recipe name"]),
    ("backbone-path-name", None, ["run", "tiny.yaml", "backbone.name=../x"], 2,
     ["backbone.name"]),
    ("out-dot", None, ["run", "tiny.yaml", "--out", "."], 2, ["run id"]),
    ("out-dotdot", None, ["run", "tiny.yaml", "--out", "runs/.."], 2, ["run id"]),
    ("out-is-file", _write("afile", "x"), ["run", "tiny.yaml", "--out", "afile"], 2,
     ["not a directory"]),
    ("out-under-file", _write("afile", "x"), ["run", "tiny.yaml", "--out", "afile/run"], 2,
     ["afile"]),
    ("out-not-a-run", _write("stuff/notes.txt", "mine"), ["run", "tiny.yaml", "--out", "stuff"],
     2, ["not a run directory"]),
    ("plugin-missing", None, ["run", "tiny.yaml", "plugins=[nope.py]"], 2, ["nope.py"]),
    ("plugin-path-name", _plugin("/../../tmp/x"), ["methods", "--plugins", "evil_plugin.py"], 2,
     ["not a safe name"]),
    # -- a run directory is bound to its config
    ("other-method-into-run", None, ["run", "moco.yaml", "--out", "runs/a"], 2,
     ["method.name"]),
    ("pretrain-other-into-unfinished", None, ["pretrain", "moco.yaml", "--out", "runs/b"], 2,
     ["method.name"]),
    ("override-seed-into-run", None, ["run", "tiny.yaml", "--out", "runs/a", "train.seed=1"], 2,
     ["train.seed"]),
    ("extend-finished", None, ["pretrain", "runs/a", "train.max_steps=8"], 2,
     ["train.max_steps"]),
    ("lr-change-on-healthy-run", None, ["pretrain", "runs/b", "optim.lr=0.01"], 2, ["optim.lr"]),
    ("edited-config", _edit_config("optim.lr", 0.5), ["pretrain", "runs/a"], 2,
     ["edited", "optim.lr"]),
    ("eval-changes-pretraining", None, ["eval", "runs/a", "train.max_steps=8"], 2,
     ["train.max_steps"]),
    ("run-dir-locked", _hold_lock, ["run", "tiny.yaml", "--out", "runs/a"], 2, ["in use"]),
    # -- corrupt files
    ("run-json-garbage", _write("runs/a/run.json", "{not json"), ["pretrain", "runs/a"], 2,
     ["run.json"]),
    ("config-garbage", _write("runs/a/config.yaml", "train: [1, 2\n"), ["pretrain", "runs/a"], 2,
     ["config.yaml"]),
    ("checkpoint-garbage", _write("runs/b/checkpoint.pt", b"\x00garbage" * 10),
     ["pretrain", "runs/b"], 2, ["checkpoint.pt"]),
    ("checkpoint-truncated", _truncate("runs/b/checkpoint.pt"), ["pretrain", "runs/b"], 2,
     ["checkpoint.pt"]),
    ("checkpoint-pickle", _write("runs/b/checkpoint.pt", pickle.dumps(_Evil())),
     ["pretrain", "runs/b"], 2, ["checkpoint.pt"]),
    ("backbone-truncated", _truncate("runs/a/backbone.safetensors"),
     ["eval", "runs/a", "--protocol", "knn"], 2, ["backbone.safetensors"]),
    ("backbone-garbage", _write("runs/a/backbone.safetensors", b"\xff" * 64),
     ["eval", "runs/a", "--protocol", "knn"], 2, ["backbone.safetensors"]),
    ("eval-unfinished", None, ["eval", "runs/b", "--protocol", "knn"], 2, ["runs/b"]),
    ("eval-recipe-as-run", None, ["eval", "tiny.yaml"], 2, ["not a run directory"]),
    ("eval-unknown-protocol", None, ["eval", "runs/a", "--protocol", "nope"], 2, ["nope"]),
    ("eval-empty-protocol", None, ["eval", "runs/a", "--protocol", ""], 2, ["protocol"]),
    ("eval-unknown-backbone-kind", None, ["eval", "tiny.yaml", "--backbone", "nonsense"], 2,
     ["nonsense"]),
    ("eval-timm-no-weights", None, ["eval", "tiny.yaml", "--backbone", "timm:resnet18"], 2,
     ["backbone.checkpoint"]),
    ("eval-timm-missing-weights", None, ["eval", "tiny.yaml", "--backbone", "timm:resnet18",
                                         "backbone.checkpoint=missing.safetensors"], 2,
     ["missing.safetensors"]),
    ("data-path-missing", None, ["run", "tiny.yaml", "data.name=imagefolder",
                                 "data.path=/nonexistent/data", "--out", "r"], 2,
     ["/nonexistent/data"]),
    ("corrupt-image-in-worker", _bad_image_folder,
     ["pretrain", "tiny.yaml", "data.name=imagefolder", "data.path=imgs", "data.num_workers=1",
      "train.batch_size=40", "--out", "r"], 2, ["7.png"]),
    # -- suites
    ("suite-missing", None, ["benchmark", "nosuite.yaml"], 2, ["nosuite.yaml"]),
    ("suite-path-name", _suite("name: ../x\ncells: [tiny.yaml]\n"), ["benchmark", "suite.yaml"],
     2, ["suite name"]),
    ("suite-unknown-key", _suite("name: s\ncels: [tiny.yaml]\n"), ["benchmark", "suite.yaml"], 2,
     ["cels"]),
    ("suite-no-cells", _suite("name: s\n"), ["benchmark", "suite.yaml"], 2, ["no cells"]),
    # -- leaderboard and tools
    ("board-format", None, ["leaderboard", "--format", "xml", "--dir", "runs/leaderboard"], 2,
     ["xml"]),
    ("check-method-unknown", None, ["check-method", "nope"], 2, ["nope"]),
    ("new-method-bad-name", None, ["new-method", "Bad-Name"], 2, ["Bad-Name"]),
    ("new-method-exists", _write("taken/x.txt", "x"), ["new-method", "mine", "--dir", "taken"], 2,
     ["taken"]),
    ("overrides-not-taken", None, ["wandb-sync", "a=b"], 2, ["a=b"]),
    # -- runs that fail: exit 1, one line, earlier files unchanged
    ("non-finite-loss", None, ["pretrain", "tiny.yaml", "optim.lr=1e30", "--out", "r"], 1,
     ["loss is"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, setup, argv, code, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workspace, tmp_path, monkeypatch, capsys, name, setup, argv, code, needles):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    monkeypatch.chdir(ws)
    if setup is not None:
        setup(ws)
    before = _digests(ws)
    try:
        rc = main([*argv, "-q"])
    finally:
        while _HELD:
            _HELD.pop().release()
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert "Traceback" not in err and lines[0].startswith("sslbench: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = _digests(ws)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"pre-existing files changed: {changed}"
    assert not Path(ws / "pwned").exists()


@pytest.mark.slow
def test_disk_full_keeps_files_and_says_one_line(workspace, tmp_path, monkeypatch, capsys):
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    monkeypatch.chdir(ws)
    before = _digests(ws)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rc = main(["run", "tiny.yaml", "--out", "r", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "no space left" in err, err
    after = _digests(ws)
    assert all(after.get(f) == h for f, h in before.items())
    assert not [p for p in ws.rglob("*.tmp")]


def test_corpus_size():
    """The issue asks for at least 60 bad inputs and faults."""
    assert len(CASES) + 1 >= 60
