"""The command line end to end: the main job, bad input, plugins, stdlib-name safety."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, write_recipe
from sslbench.cli import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("overrides, needle", [
    (["train.batchsize=8"], "did you mean 'train.batch_size'"),
    (["train.max_steps=many"], "train.max_steps"),
    (["data.name=imagefolder", "data.path=/nonexistent/data"], "/nonexistent/data"),
    (["method.name=simclear"], "unknown method 'simclear'"),
    (["backbone.name=resnet181"], "unknown backbone 'resnet181'"),
    (["backbone.name=test_vit", "backbone.patch_size=5"], "not divisible by the ViT patch size"),
    (["data.name=imagefolder"], "data.path is required"),
    (["data.name=cifar10", "data.path=nowhere", "data.download=false"], "data.download=true"),
])
def test_bad_input_one_line_exit_2(tiny_recipe, capsys, overrides, needle):
    code = main(["pretrain", str(tiny_recipe), *overrides, "--out", "r"])
    assert code == 2
    assert needle in _err_line(capsys)
    assert not Path("r/checkpoint.pt").exists()


def test_missing_recipe_and_debug_traceback(capsys):
    assert main(["run", "nope.yaml"]) == 2
    assert "recipe not found: nope.yaml" in _err_line(capsys)
    from sslbench.errors import UserError

    with pytest.raises(UserError):
        main(["run", "nope.yaml", "--debug"])


@pytest.mark.slow
def test_run_main_job_writes_run_records_and_board(tiny_recipe, capsys, tmp_path):
    code = main(["run", str(tiny_recipe), "--out", "runs/tiny", "leaderboard.dir=lb"])
    assert code == 0
    run = Path("runs/tiny")
    for f in ("config.yaml", "checkpoint.pt", "backbone.safetensors", "metrics.jsonl", "run.json"):
        assert (run / f).is_file(), f
    records = sorted(Path("lb/results/embedded").glob("*.json"))
    methods = {(json.loads(p.read_text())["method"], json.loads(p.read_text())["protocol"])
               for p in records}
    assert methods == {(m, p) for m in ("simclr", "raw_pixels", "random_init")
                       for p in ("linear", "knn")}
    rec = json.loads(next(p for p in records if "simclr" in p.name and "linear" in p.name)
                     .read_text())
    assert 0 <= rec["metrics"]["acc"] <= 1 and "ood_acc" in rec["metrics"]
    assert rec["recipe"]["sha256"] and rec["config"]["method"]["name"] == "simclr"
    assert rec["provenance"]["torch"] and rec["pretrain"]["steps"] == 6
    # the record keeps the run's loss curve, as logged to metrics.jsonl
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rec["pretrain"]["loss_curve"] == [[m["step"], m["train/loss"]] for m in logged
                                             if "train/loss" in m]
    assert rec["pretrain"]["loss_curve"][-1][0] == 6
    lin = rec["protocol_settings"]
    # the grid [0.1, 1], grown by at most eval.linear.extend_grid values past a winning end
    assert lin["c_grid"] == [0.1, 1.0] and lin["chosen_C"] in lin["chosen_c_searched"]
    assert {0.1, 1.0} <= set(lin["chosen_c_searched"]) and len(lin["chosen_c_searched"]) <= 4
    board = Path("lb/LEADERBOARD.md").read_text()
    assert "| simclr | test_resnet | tiny |" in board
    out = capsys.readouterr().out
    assert "sslbench leaderboard" in out and "total wall time" in out
    # a short summary (a line per subject and protocol, 95% intervals), not the whole board
    assert len(out.splitlines()) <= 12 and max(map(len, out.splitlines())) <= 100
    assert re.search(r"^simclr +test_resnet +linear +all +\d+\.\d ± \d+\.\d", out, re.M)

    # eval of an existing run reuses the cached features, and baselines work from a recipe
    assert list((run / "features").glob("*.pt"))
    assert main(["eval", str(run), "--protocol", "knn", "leaderboard.dir=lb2", "-q"]) == 0
    assert len(list(Path("lb2/results/embedded").glob("*.json"))) == 1
    assert main(["eval", str(tiny_recipe), "--backbone", "pixels", "--protocol", "knn",
                 "leaderboard.dir=lb3", "-q"]) == 0
    assert main(["leaderboard", "--dir", "lb", "--format", "csv"]) == 0
    assert "simclr" in capsys.readouterr().out


def test_methods_lists_simclr_and_plugin_file(tmp_path, capsys):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from sslbench.ssl import register_method
        from sslbench.ssl.simclr import SimCLR

        @register_method("simclr_plugin_file")
        class SimCLRPlugin(SimCLR):
            families = ("resnet",)
            paper = "test plugin"
    '''))
    assert main(["methods", "--plugins", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "simclr " in out and "simclr_plugin_file" in out and "resnet, vit" in out
    # columns stay aligned whatever the width of a plugin's source
    lines = out.splitlines()
    col = lines[0].index("paper")
    row = next(line for line in lines if line.startswith("simclr_plugin_file "))
    assert row[col:] == "test plugin" and row[col - 2:col] == "  "
    recipe = write_recipe(tmp_path / "p.yaml", {"plugins": [str(plugin)],
                                                "method": {"name": "simclr_plugin_file"},
                                                "backbone": {"name": "test_vit"}})
    assert main(["pretrain", str(recipe)]) == 2
    assert "does not support vit backbones" in _err_line(capsys)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(extra)
    return env


def test_entry_point_plugin_and_python_m(tmp_path):
    """A method registered through the ``sslbench.methods`` entry-point group shows up."""
    site = tmp_path / "site"
    (site / "ep_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "ep_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (site / "ep_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[sslbench.methods]\nsimclr_ep = ep_plugin:SimCLREP\n")
    (site / "ep_plugin.py").write_text(textwrap.dedent('''
        from sslbench.ssl.simclr import SimCLR
        class SimCLREP(SimCLR):
            paper = "entry point plugin"
    '''))
    r = subprocess.run([sys.executable, "-m", "sslbench", "methods"], capture_output=True,
                       text=True, env=_env(PYTHONPATH=str(site)), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "simclr_ep" in r.stdout and "plugin ep_plugin:SimCLREP" in r.stdout


def test_stdlib_ssl_and_hf_datasets_not_shadowed():
    code = ("import ssl, datasets; ssl.create_default_context(); "
            "assert hasattr(datasets, 'load_dataset'); "
            "import sslbench.ssl, sslbench.datasets; print(ssl.__file__)")
    for cwd in (REPO, REPO / "tests"):
        r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert str(REPO / "sslbench") not in r.stdout


def test_stdlib_ssl_usable_inside_the_test_run():
    import ssl

    import datasets

    import sslbench.datasets
    import sslbench.ssl

    assert ssl.create_default_context() is not None
    assert hasattr(datasets, "load_dataset") and sslbench.ssl.__name__ == "sslbench.ssl"
    assert not ssl.__file__.startswith(str(REPO / "sslbench"))


@pytest.mark.parametrize("command", ["run", "pretrain"])
def test_failed_data_load_leaves_no_run_directory_and_no_wandb_run(tiny_recipe, tmp_path,
                                                                    command):
    code = main([command, str(tiny_recipe), "data.name=cifar10", "data.path=nowhere",
                 "data.download=false", "logging.wandb=true", "--out", "r"])
    assert code == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "wandb").exists()
