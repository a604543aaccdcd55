"""W&B logging through the real client, offline, and the JSON-lines metrics file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from omegaconf import OmegaConf

from sslbench.config import LoggingConfig
from sslbench.tracking import Tracker


def read_wandb_log(path: Path) -> list:
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
