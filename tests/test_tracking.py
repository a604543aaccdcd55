"""W&B logging through the real client, offline, and the JSON-lines metrics file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from sslbench.config import LoggingConfig
from sslbench.tracking import Tracker


def read_wandb_log(path: Path, timeout: float = 30.0) -> list:
    """Parse a W&B transaction log, waiting until W&B's service has written the run's
    ``exit`` record (``finish()`` can return before the log is flushed on a busy machine)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _parse_wandb_log(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or \
                time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _parse_wandb_log(path: Path) -> list:
    """Parse a W&B transaction log (LevelDB-style 32 KiB blocks of protobuf ``Record``s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_offline_wandb_run_holds_logged_metrics(tmp_path):
    cfg = OmegaConf.structured(LoggingConfig(project="sslbench-test", group="g"))
    t = Tracker(tmp_path / "metrics.jsonl", cfg, "run-x", "pretrain",
                {"method": "simclr", "backbone": "test_resnet", "dataset": "embedded",
                 "recipe_hash": "abc"}, tmp_path, tags=["simclr"])
    for step in (1, 2, 3):
        t.log({"train/loss": 1.0 / step, "train/img_per_s": 100.0}, step=step)
    t.summary({"eval/ssl/linear/acc": 0.5})
    t.finish()

    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    records = read_wandb_log(logs[0])
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses == [1.0, 0.5, 1.0 / 3]
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].job_type == "pretrain" and runs[0].run_group == "g" and list(runs[0].tags) == ["simclr"]
    config = {i.key: json.loads(i.value_json) for i in runs[0].config.update}
    assert config["method"] == "simclr" and config["recipe_hash"] == "abc"
    summary = {_key(i): json.loads(i.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary.get("eval/ssl/linear/acc") == 0.5

    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]


def test_wandb_disabled_writes_only_jsonl(tmp_path):
    t = Tracker(tmp_path / "m.jsonl", OmegaConf.structured(LoggingConfig(wandb=False)), "r")
    t.log({"a": 1.0}, step=1)
    t.finish()
    assert not (tmp_path / "wandb").exists()
    assert json.loads((tmp_path / "m.jsonl").read_text())["a"] == 1.0


def _records_of(tmp_path: Path, pattern: str = "wandb/offline-run-*/run-*.wandb") -> list:
    return [r for log in sorted(tmp_path.glob(pattern)) for r in read_wandb_log(log)]


def _table(records: list, key: str) -> dict:
    """A logged wandb.Table's history entry (flattened as key/_type, key/nrows, ...)."""
    return {_key(i)[len(key) + 1:]: json.loads(i.value_json) for r in records
            if r.WhichOneof("record_type") == "history" for i in r.history.item
            if _key(i).startswith(key + "/")}


def test_offline_artifact_and_table_are_written(tmp_path):
    cfg = OmegaConf.structured(LoggingConfig(project="sslbench-test", group="suite-x"))
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"weights")
    t = Tracker(None, cfg, "run-y", "pretrain", {}, tmp_path)
    assert t.log_artifact(weights, "backbone/run y", "model", {"method": "simclr"}) == \
        "backbone-run-y"
    assert t.use_artifact("backbone-run-y", "model") is False  # offline: W&B cannot resolve
    t.log_table("leaderboard", ["method", "acc"], [["simclr", 60.1], ["<b>x</b>", 1.0]])
    t.finish()
    records = _records_of(tmp_path)
    arts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    # the table travels as W&B's own run_table artifact
    assert sorted(a.type for a in arts) == ["model", "run_table"]
    model = [a for a in arts if a.type == "model"][0]
    assert model.name == "backbone-run-y" and json.loads(model.metadata) == {"method": "simclr"}
    table = _table(records, "leaderboard")
    assert table["_type"] == "table-file" and table["nrows"] == 2 and table["ncols"] == 2


def test_leaderboard_table_run_and_sync_discovery(tmp_path, capsys):
    from sslbench.leaderboard.wandb_table import LEADERBOARD_COLUMNS, log_leaderboard
    from sslbench.tracking import offline_runs, wandb_sync

    import shutil

    from conftest import REPO

    lb = tmp_path / "lb"
    shutil.copytree(REPO / "leaderboard" / "results", lb / "results")
    cfg = OmegaConf.structured(LoggingConfig(project="sslbench-test"))
    assert log_leaderboard(lb, cfg, group="embedded", run_dir=tmp_path / "runs")
    runs = offline_runs([tmp_path / "runs"])
    assert len(runs) == 1
    records = _records_of(tmp_path, "runs/wandb/offline-run-*/run-*.wandb")
    run = [r.run for r in records if r.WhichOneof("record_type") == "run"][0]
    assert run.job_type == "leaderboard" and run.run_group == "embedded"
    table = _table(records, "leaderboard")
    assert table["ncols"] == len(LEADERBOARD_COLUMNS) and table["nrows"] >= 6
    assert wandb_sync([tmp_path / "runs"], dry_run=True) == 0
    assert str(runs[0]) in capsys.readouterr().out
    assert log_leaderboard(lb, OmegaConf.structured(LoggingConfig(wandb=False))) is False


@pytest.mark.slow
def test_run_logs_pretrain_and_one_eval_run_per_protocol(tmp_path):
    """`sslbench run` with W&B (offline): a pretrain run with the backbone artifact, then one
    run per protocol (job_type = protocol) in the same group, linked by `pretrain_run`, each
    with its result records as an artifact; baselines get their own runs."""
    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", {
        "train": {"max_steps": 2, "batch_size": 32}, "logging": {"wandb": True},
        "eval": {"protocols": ["linear", "knn"], "baselines": ["random_init"]},
        "leaderboard": {"dir": str(tmp_path / "lb"), "render": False}})
    import os
    import subprocess
    import sys

    # in a fresh process: W&B keeps process-wide state (its service address goes into
    # os.environ), and other tests run W&B in this one
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path),
               OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "sslbench", "run", str(recipe), "--out", "runs/r1",
                        "-q"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    runs, pretrain_logs = {}, []
    logs = sorted(tmp_path.rglob("offline-run-*/run-*.wandb"))
    assert logs, sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))[:50]
    for log in logs:
        recs = read_wandb_log(log)
        run = [r.run for r in recs if r.WhichOneof("record_type") == "run"][0]
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        arts = [(r.artifact.name, r.artifact.type) for r in recs
                if r.WhichOneof("record_type") == "artifact"]
        runs.setdefault((config["method"], run.job_type), (run, config, arts))
        if run.job_type == "pretrain":
            pretrain_logs.append((run, recs))
    # training, then the evaluation summary: two offline logs of ONE W&B run (the id kept in
    # the run directory), so a dashboard row holds the loss curve and the accuracies
    run_id = (tmp_path / "runs" / "r1" / "wandb_id").read_text().strip()
    assert [run.run_id for run, _ in pretrain_logs] == [run_id, run_id]
    summary = {_key(i): json.loads(i.value_json) for _, recs in pretrain_logs for r in recs
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert 0 <= summary["eval/linear/acc"] <= 1 and 0 <= summary["eval/knn/acc"] <= 1
    assert set(runs) == {("simclr", "pretrain"), ("simclr", "linear"), ("simclr", "knn"),
                         ("random_init", "linear"), ("random_init", "knn")}
    assert {run.run_group for run, _, _ in runs.values()} == {"embedded"}
    assert ("backbone-r1", "model") in runs[("simclr", "pretrain")][2]
    run, config, arts = runs[("simclr", "linear")]
    assert config["pretrain_run"] == "r1" and config["backbone_artifact"] == "backbone-r1"
    assert ("result-r1-linear", "result") in arts and "linear" in list(run.tags)
    assert runs[("random_init", "knn")][1]["pretrain_run"] is None


def test_resumed_run_continues_its_wandb_run(tmp_path):
    """The id kept in the run directory: a second tracker of the same run (a resumed
    pretraining, or the evaluation summary) logs to the same W&B run, not a namesake."""
    cfg = OmegaConf.structured(LoggingConfig(project="sslbench-test"))
    for step in (1, 2):
        t = Tracker(None, cfg, "run-z", "pretrain", {}, tmp_path, id_file=tmp_path / "wandb_id")
        t.log({"train/loss": 1.0 / step}, step=step)
        t.finish()
    run_id = (tmp_path / "wandb_id").read_text().strip()
    assert len(run_id) == 8 and run_id.isalnum()
    logs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    ids = [r.run.run_id for log in logs for r in read_wandb_log(log)
           if r.WhichOneof("record_type") == "run"]
    assert ids == [run_id, run_id]


def test_loss_curve_reads_metrics_and_thins_to_its_points(tmp_path):
    from sslbench.tracking import loss_curve

    path = tmp_path / "metrics.jsonl"
    assert loss_curve(path) is None  # no file
    lines = [json.dumps({"step": s, "train/loss": 10.0 - s / 100, "train/lr": 0.1})
             for s in range(10, 1010, 10)]
    # an eval line without the key and a line cut short by a kill are skipped
    path.write_text("\n".join(lines[:50] + [json.dumps({"step": 500, "eval/acc": 0.5})]
                              + lines[50:] + ['{"step": 1010, "train/lo']) + "\n")
    full = loss_curve(path, points=1000)
    assert full == [[s, 10.0 - s / 100] for s in range(10, 1010, 10)]
    thin = loss_curve(path, points=7)
    assert len(thin) == 7 and thin[0] == full[0] and thin[-1] == full[-1]
    assert [p[0] for p in thin] == sorted({p[0] for p in thin})  # increasing, no repeats
    assert loss_curve(path, key="train/missing") is None
