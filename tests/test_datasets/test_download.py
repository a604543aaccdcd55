"""``data.download``: torchvision's REAL download code (urlopen, archive MD5, extraction, per-file
MD5) against a loopback HTTP server on 127.0.0.1 serving small archives in the exact formats
torchvision expects (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``,
``stl10_binary.tar.gz``). The dataset classes' ``url`` / ``tgz_md5`` / per-file MD5 lists are
redirected to the server before anything downloads, and every test runs with sockets and name
lookups restricted to the loopback interface: nothing here can reach the internet."""
from __future__ import annotations

import hashlib
import io
import pickle
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.datasets import CIFAR10, CIFAR100, STL10

from sslbench import config as config_module
from sslbench.config import DataConfig
from sslbench.datasets.sources import load_configured, load_source
from sslbench.errors import UserError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --------------------------------------------------------------------------- no internet
@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Refuse every connection and name lookup that is not loopback, and bypass proxies."""
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise OSError(f"test blocked a connection to {address[0]} (loopback only)")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, f"test blocked a lookup of {host}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# --------------------------------------------------------------------------- loopback server
@dataclass
class Server:
    """Serves ``files`` (name -> bytes, replaceable between requests); logs request paths."""

    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.requests.append(self.path)
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- archives
def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Archive:
    """A generated dataset archive: its bytes, its members (path -> bytes) and the pixels and
    labels written per split."""

    data: bytes
    members: dict[str, bytes]
    expected: dict[str, tuple[np.ndarray, np.ndarray]]


def _cifar_archive(variant: str, n: int = 3) -> Archive:
    """``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` with ``n`` images per file."""
    rng = np.random.default_rng(1)
    cls = CIFAR10 if variant == "cifar10" else CIFAR100
    label_key = "labels" if variant == "cifar10" else "fine_labels"
    k = 10 if variant == "cifar10" else 100
    members, expected = {}, {"train": [], "test": []}
    for split, entries in (("train", cls.train_list), ("test", cls.test_list)):
        for name, _ in entries:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, k, n).tolist()
            members[f"{cls.base_folder}/{name}"] = pickle.dumps(
                {"data": data, label_key: labels, "filenames": [f"{j}.png" for j in range(n)]})
            expected[split].append((data.reshape(-1, 3, 32, 32), np.array(labels)))
    names_key = cls.meta["key"]
    members[f"{cls.base_folder}/{cls.meta['filename']}"] = pickle.dumps(
        {names_key: [f"class{i}" for i in range(k)]})
    joined = {s: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v]))
              for s, v in expected.items()}
    return Archive(_tar_gz(members), members, joined)


def _stl_bytes(chw: np.ndarray) -> bytes:
    """STL-10's on-disk layout: per image 3 x 96 x 96, each channel column-major."""
    return np.ascontiguousarray(chw.transpose(0, 1, 3, 2)).tobytes()


def _stl10_archive(n: int = 4, n_unlabeled: int = 6) -> Archive:
    rng = np.random.default_rng(2)
    members, expected = {}, {}
    for split, count in (("train", n), ("test", n + 1), ("unlabeled", n_unlabeled)):
        chw = rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8)
        members[f"stl10_binary/{split}_X.bin"] = _stl_bytes(chw)
        labels = rng.integers(0, 10, count) if split != "unlabeled" else np.full(count, -1)
        if split != "unlabeled":
            members[f"stl10_binary/{split}_y.bin"] = (labels + 1).astype(np.uint8).tobytes()
        expected[split] = (chw, labels)
    members["stl10_binary/class_names.txt"] = "\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
         "truck"]).encode()
    members["stl10_binary/fold_indices.txt"] = b"0 1\n" * 10
    return Archive(_tar_gz(members), members, expected)


def _publish(monkeypatch, server: Server, cls: type, archive: Archive,
             archive_md5: str | None = None, file_md5: dict[str, str] | None = None) -> str:
    """Serve ``archive`` and point torchvision's ``cls`` at it (URL, archive and file MD5s)."""
    server.files[cls.filename] = archive.data
    monkeypatch.setattr(cls, "url", server.url(cls.filename))
    monkeypatch.setattr(cls, "tgz_md5", archive_md5 or _md5(archive.data))
    md5s = {p.split("/", 1)[1]: _md5(b) for p, b in archive.members.items()}
    md5s.update(file_md5 or {})
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(cls, attr, [[f, md5s[f]] for f, _ in getattr(cls, attr)])
    if hasattr(cls, "meta"):
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})
    return "/" + cls.filename


def _cfg(**kw) -> DataConfig:
    return OmegaConf.structured(DataConfig(**kw))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def _leftovers(root: Path) -> list[str]:
    """Anything in ``root`` but the extracted folders and the lock files."""
    return sorted(p.name for p in root.iterdir()
                  if not p.name.endswith(".lock") and p.name not in
                  ("cifar-10-batches-py", "cifar-100-python", "stl10_binary"))


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("variant, cls", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_download_extract_load(tmp_path, monkeypatch, server, variant, cls):
    archive = _cifar_archive(variant)
    path = _publish(monkeypatch, server, cls, archive)
    root = tmp_path / "data" / variant
    out = load_configured(_cfg(name=variant, path=str(root)))
    assert path in server.requests  # the loopback server served the download
    assert set(out) == {"train", "test"}
    for split in ("train", "test"):
        x, y = out[split].get_batch(list(range(len(out[split]))))
        assert x.dtype == torch.uint8
        assert torch.equal(x, torch.from_numpy(archive.expected[split][0]))
        assert y.tolist() == archive.expected[split][1].tolist()
    assert out["train"].classes[:2] == ["class0", "class1"]
    assert (root / cls.base_folder).is_dir() and _leftovers(root) == []  # archive removed
    seen = len(server.requests)
    small = load_configured(_cfg(name=variant, path=str(root), image_size=16))
    assert len(server.requests) == seen  # present: not downloaded again
    assert small["test"].get_batch([0])[0].shape == (1, 3, 16, 16)


def test_stl10_download_splits_and_unlabeled_is_pretraining_only(tmp_path, monkeypatch, server):
    archive = _stl10_archive()
    path = _publish(monkeypatch, server, STL10, archive)
    root = tmp_path / "stl"
    out = load_configured(_cfg(name="stl10", path=str(root), image_size=96))
    assert path in server.requests
    assert set(out) == {"train", "test", "unlabeled"}
    for split in ("train", "test", "unlabeled"):
        chw, labels = archive.expected[split]
        x, y = out[split].get_batch(list(range(len(chw))))
        assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(chw)), split
        assert y.tolist() == labels.tolist()
    unl = out["unlabeled"]
    assert getattr(unl, "pretrain_only", False) and not getattr(out["train"], "pretrain_only",
                                                                  False)
    assert (unl.labels == -1).all() and unl.classes == out["train"].classes
    assert out["train"].classes[2] == "car"
    clone = pickle.loads(pickle.dumps(unl))  # DataLoader workers get a copy
    assert torch.equal(clone.get_batch([5, 1])[0], unl.get_batch([5, 1])[0])
    assert clone.fingerprint() == unl.fingerprint()
    small = load_configured(_cfg(name="stl10", path=str(root), image_size=32))
    assert small["unlabeled"].get_batch([0, 1])[0].shape == (2, 3, 32, 32)
    assert small["train"].get_batch([0])[0].shape == (1, 3, 32, 32)
    assert small["unlabeled"].fingerprint() != unl.fingerprint()


def test_corrupt_archive_is_discarded_then_a_good_one_works(tmp_path, monkeypatch, server):
    archive = _cifar_archive("cifar10")
    root = tmp_path / "c10"
    _publish(monkeypatch, server, CIFAR10, archive, archive_md5="0" * 32)  # wrong MD5
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="cifar10", path=str(root)))
    msg = _one_line(e)
    assert "CIFAR-10" in msg and "MD5" in msg and server.url("cifar-10-python.tar.gz") in msg
    assert "data.download=false" in msg
    assert not root.exists()  # the folder it created for the download is gone again
    with pytest.raises(UserError, match="data.download=true"):  # nothing half-extracted is used
        load_source("cifar10", str(root), 32, download=False)
    _publish(monkeypatch, server, CIFAR10, archive)
    out = load_configured(_cfg(name="cifar10", path=str(root)))
    assert len(out["train"]) == len(archive.expected["train"][1])


def test_corrupt_extracted_file_is_discarded(tmp_path, monkeypatch, server):
    archive = _cifar_archive("cifar10")
    _publish(monkeypatch, server, CIFAR10, archive, file_md5={"test_batch": "0" * 32})
    root = tmp_path / "c10"
    root.mkdir()  # an existing folder is kept, with nothing extracted in it
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="cifar10", path=str(root)))
    assert "failed their MD5 check" in _one_line(e)
    assert not (root / "cifar-10-batches-py").exists() and _leftovers(root) == []


def test_unreachable_server_is_one_line_naming_the_fix(tmp_path, monkeypatch, server):
    archive = _cifar_archive("cifar10")
    _publish(monkeypatch, server, CIFAR10, archive)
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    root = tmp_path / "c10"
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="cifar10", path=str(root)))
    msg = _one_line(e)
    assert msg.startswith(f"could not download CIFAR-10 from {url}: ")
    assert "check the network" in msg and "data.download=false" in msg
    assert f"data.path={root}" in msg and not root.exists()


def test_http_error_is_one_line(tmp_path, monkeypatch, server):
    _publish(monkeypatch, server, STL10, _stl10_archive())
    monkeypatch.setattr(STL10, "url", server.url("missing.tar.gz"))
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="stl10", path=str(tmp_path / "stl")))
    msg = _one_line(e)
    assert "could not download STL-10" in msg and "404" in msg
    assert "/missing.tar.gz" in server.requests


def test_download_off_gives_the_one_line_error(tmp_path, monkeypatch, server):
    _publish(monkeypatch, server, CIFAR10, _cifar_archive("cifar10"))
    monkeypatch.setattr(config_module, "DATA_CACHE_DIR", str(tmp_path / "cache"))
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="cifar10", path=str(missing), download=False))
    msg = _one_line(e)
    assert "not found" in msg and str(missing) in msg and "data.download=true" in msg
    (missing).mkdir()
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="stl10", path=str(missing), download=False))
    assert "STL-10 data not found" in _one_line(e) and "data.download=true" in str(e.value)
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="cifar100", download=False))
    msg = _one_line(e)
    assert "data.path is required" in msg and "data.download=true" in msg
    assert str(tmp_path / "cache" / "cifar100") in msg
    with pytest.raises(UserError, match="data.path is required for data.name='imagefolder'"):
        load_configured(_cfg(name="imagefolder"))
    assert server.requests == [] and not missing.joinpath("cifar-10-batches-py").exists()


def test_default_cache_dir_when_path_unset(tmp_path, monkeypatch, server):
    archive = _cifar_archive("cifar10")
    _publish(monkeypatch, server, CIFAR10, archive)
    monkeypatch.setattr(config_module, "DATA_CACHE_DIR", str(tmp_path / "cache"))
    out = load_configured(_cfg(name="cifar10"))
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    seen = len(server.requests)
    again = load_configured(_cfg(name="cifar10", download=False))  # offline reuse of the cache
    assert len(server.requests) == seen
    assert torch.equal(again["test"].get_batch([0])[0], out["test"].get_batch([0])[0])


def test_archive_already_there_is_verified_and_used(tmp_path, monkeypatch, server):
    archive = _cifar_archive("cifar10")
    _publish(monkeypatch, server, CIFAR10, archive)
    root = tmp_path / "c10"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(archive.data)
    stale = root / ".cifar-10-batches-py.partial-dead"  # left by a killed attempt
    (stale / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(UserError, match="extract it with `tar xzf`"):
        load_source("cifar10", str(root), 32, download=False)
    out = load_configured(_cfg(name="cifar10", path=str(root)))
    assert server.requests == [] and len(out["test"]) == len(archive.expected["test"][1])
    assert not stale.exists() and (root / "cifar-10-python.tar.gz").is_file()  # theirs: kept


def test_ood_sets_never_download_and_refuse_unlabeled(tmp_path, monkeypatch, server):
    from sslbench.config import OODSetConfig
    from sslbench.datasets.ood import CIFAR10_CLASSES, load_ood_sets

    archive = _stl10_archive()
    _publish(monkeypatch, server, STL10, archive)
    root = tmp_path / "stl"
    load_configured(_cfg(name="stl10", path=str(root)))
    n = len(server.requests)
    cfg = OmegaConf.structured(DataConfig(name="cifar10", ood_sets=[
        OODSetConfig(name="stl", kind="stl10", path=str(root)),
        OODSetConfig(name="stl_src", kind="stl10", path=str(root), split="test"),
        OODSetConfig(name="absent", kind="cifar10", path=str(tmp_path / "none"))]))
    sets = load_ood_sets(cfg, CIFAR10_CLASSES, quiet=True)
    assert set(sets) == {"stl", "stl_src"} and len(server.requests) == n
    assert torch.equal(sets["stl"].labels, sets["stl_src"].labels)
    # a generic source's unlabeled split (labels -1) is refused, not silently relabelled
    bad = OmegaConf.structured(DataConfig(name="cifar10", ood_sets=[
        OODSetConfig(name="u", kind="imagefolder", path=str(root), split="unlabeled")]))
    monkeypatch.setattr("sslbench.datasets.ood.load_source",
                        lambda *a, **k: load_source("stl10", str(root), 32))
    with pytest.raises(UserError, match="split 'unlabeled' has no labels"):
        load_ood_sets(bad, CIFAR10_CLASSES, quiet=True)


def test_config_fields():
    cfg = DataConfig()
    assert cfg.download is True and cfg.pretrain_split is None
    assert config_module.DATA_CACHE_DIR == "~/.cache/sslbench"


def test_offline_with_the_real_url_is_one_line(tmp_path):
    """torchvision's real URL, with the network refused (as on a machine without one)."""
    root = tmp_path / "c10"
    with pytest.raises(UserError) as e:
        load_configured(_cfg(name="cifar10", path=str(root)))
    msg = _one_line(e)
    assert msg.startswith(f"could not download CIFAR-10 from {CIFAR10.url}: ")
    assert "blocked" in msg and "check the network" in msg and "data.download=false" in msg
    assert not root.exists()


def test_failed_download_removes_the_folders_it_made(tmp_path, monkeypatch, server):
    _publish(monkeypatch, server, CIFAR10, _cifar_archive("cifar10"), archive_md5="0" * 32)
    monkeypatch.setattr(config_module, "DATA_CACHE_DIR", str(tmp_path / "home" / ".cache" / "x"))
    (tmp_path / "home").mkdir()
    with pytest.raises(UserError, match="MD5"):
        load_configured(_cfg(name="cifar10"))
    assert server.requests and list((tmp_path / "home").iterdir()) == []
