"""``sslbench new-method``: the scaffolded plugin package is valid and its method conforms."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from sslbench.cli import main
from sslbench.errors import UserError
from sslbench.scaffold import class_name, scaffold


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    return err


def test_scaffold_files_and_pyproject(tmp_path):
    root = scaffold("my_ssl", tmp_path / "pkg")
    assert root == tmp_path / "pkg"
    for rel in ("pyproject.toml", "README.md", "sslbench_my_ssl/__init__.py",
                "tests/test_my_ssl.py", "recipes/embedded.yaml"):
        assert (root / rel).is_file(), rel
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "sslbench-my_ssl"
    assert "sslbench" in meta["project"]["dependencies"]
    assert meta["project"]["entry-points"]["sslbench.methods"] == {
        "my_ssl": "sslbench_my_ssl:MySsl"}
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    readme = (root / "README.md").read_text()
    for step in ("pip install -e sslbench-my_ssl", "sslbench methods",
                 "sslbench check-method my_ssl", "sslbench leaderboard submit"):
        assert step in readme
    for rel in ("sslbench_my_ssl/__init__.py", "tests/test_my_ssl.py"):
        compile((root / rel).read_text(), rel, "exec")
    assert "TODO" in (root / "sslbench_my_ssl/__init__.py").read_text()
    assert class_name("my_ssl") == "MySsl" and class_name("byol2") == "Byol2"


@pytest.mark.slow
def test_scaffolded_method_conforms_as_generated(tmp_path):
    from sslbench.conformance import assert_conforms
    from sslbench.recipe import load_recipe
    from sslbench.ssl import METHODS

    name = "scaffold_probe"
    root = scaffold(name, tmp_path / f"sslbench-{name}")
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(f"sslbench_{name}")
        # what the entry point does once the package is installed
        METHODS.register(name, origin=f"plugin sslbench_{name}:ScaffoldProbe")(
            module.ScaffoldProbe)
        checks = assert_conforms(name, ddp=False)
        assert {c.family for c in checks} == {"resnet", "vit"}
        assert all(c.ok is not False for c in checks)

        cfg = load_recipe(root / "recipes" / "embedded.yaml")
        assert cfg.method.name == name and cfg.backbone.name == "test_resnet"

        # the generated tests (except the conformance one, which just ran above) pass as well
        spec = importlib.util.spec_from_file_location(f"test_{name}_generated",
                                                      root / "tests" / f"test_{name}.py")
        tests = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tests)
        tests.test_registered_through_the_entry_point()
        tests.test_loss_prefers_agreeing_views()
    finally:
        METHODS.unregister(name)
        sys.path.remove(str(root))
        sys.modules.pop(f"sslbench_{name}", None)


@pytest.mark.parametrize("bad, needle", [
    ("MyMethod", "must be lowercase; use 'mymethod'"),
    ("my-method", "not a valid Python identifier"),
    ("1method", "not a valid Python identifier"),
    ("class", "not a valid Python identifier"),
    ("_hidden", "must start with a lowercase letter"),
    ("simclr", "already registered (built-in)"),
])
def test_bad_names_give_user_error_and_exit_2(tmp_path, capsys, bad, needle):
    with pytest.raises(UserError, match="method"):
        scaffold(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert main(["new-method", bad, "--dir", str(tmp_path / "y")]) == 2
    assert needle in _err_line(capsys)
    assert not (tmp_path / "y").exists()


def test_existing_directory_is_refused(tmp_path, capsys):
    # default directory ./sslbench-NAME (tests run in their own temporary working directory)
    assert main(["new-method", "fresh_method", "-q"]) == 0
    assert Path("sslbench-fresh_method/sslbench_fresh_method/__init__.py").is_file()
    before = Path("sslbench-fresh_method/pyproject.toml").read_text()
    assert main(["new-method", "fresh_method"]) == 2
    assert "sslbench-fresh_method already exists" in _err_line(capsys)
    assert Path("sslbench-fresh_method/pyproject.toml").read_text() == before

    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists"):
        scaffold("other_method", tmp_path / "taken")
    assert main(["new-method", "other_method", "--dir", str(tmp_path / "taken")]) == 2
    assert "already exists; remove it or pass another directory with --dir" in _err_line(capsys)
    assert not any((tmp_path / "taken").iterdir())


def test_cli_prints_next_steps(tmp_path, capsys):
    assert main(["new-method", "printed_method", "--dir", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "pip install -e" in out and "sslbench check-method printed_method" in out


def test_scaffolded_file_registers_when_loaded_as_a_plugin_file(tmp_path):
    """``--plugins path/__init__.py`` (no install, no entry point) finds the method."""
    from sslbench.registry import load_plugin_file
    from sslbench.ssl import METHODS, get_method

    root = scaffold("plugin_file_probe", tmp_path / "pkg")
    try:
        load_plugin_file(root / "sslbench_plugin_file_probe" / "__init__.py")
        assert get_method("plugin_file_probe").__name__ == "PluginFileProbe"
    finally:
        METHODS.unregister("plugin_file_probe")


def test_version(capsys):
    from sslbench import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sslbench {__version__}"
