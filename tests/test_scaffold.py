"""`ticketx plugin new`: the name and folder rules, the files, and the written plugin installed with
`pip install -e` into a throwaway environment, listed, searched with `ticketx find` and tested."""

from __future__ import annotations

import csv
import fnmatch
import importlib.metadata
import importlib.util
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from ticketx import config as configlib
from ticketx import scaffold
from ticketx.cli import main
from ticketx.testing import check_task

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FILES = {"pyproject.toml", "README.md", ".gitignore", "ticketx_demo/__init__.py", "ticketx_demo/plugin.py",
         "recipes/demo.toml", "tests/test_demo.py"}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["demo", "my_tasks", "a", "vision2", "x_1_"])
def test_valid_names(name):
    scaffold.check_name(name)


@pytest.mark.parametrize("name, hint", [
    ("Demo", "'demo'"), ("my-tasks", "'my_tasks'"), ("2d", "'d'"), ("_x", "'x'"), ("", None), ("dé", "'d_'"),
    ("a b", "'a_b'"), ("x.y", "'x_y'"),
])
def test_invalid_names_are_refused_with_a_valid_one_suggested(name, hint):
    with pytest.raises(scaffold.ScaffoldError, match="use lowercase letters, digits and underscores") as e:
        scaffold.check_name(name)
    assert (f"e.g. {hint}" in str(e.value)) if hint else "e.g." not in str(e.value)


def test_an_installed_plugins_name_is_refused(tmp_path):
    with pytest.raises(scaffold.ScaffoldError, match="a plugin named 'vision' is already installed"):
        scaffold.new_plugin("vision", tmp_path, taken={"vision", "nlp"})
    assert not any(tmp_path.iterdir())


def test_files_written_rendered_and_consistent(tmp_path):
    written = scaffold.new_plugin("demo", tmp_path)
    root = tmp_path / "ticketx-demo"
    assert written.root == root and tree(root) == FILES == {str(p) for p in written.files}
    for path in FILES:
        assert "{{" not in (root / path).read_text(), path  # every placeholder replaced
    for path in ("ticketx_demo/plugin.py", "ticketx_demo/__init__.py", "tests/test_demo.py"):
        compile((root / path).read_text(), path, "exec")
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "ticketx-demo"
    assert project["project"]["entry-points"]["ticketx.plugins"] == {"demo": "ticketx_demo.plugin:Plugin"}
    assert project["tool"]["setuptools"]["packages"] == ["ticketx_demo"]
    assert 'PLUGIN = "demo"' in (root / "ticketx_demo/plugin.py").read_text()
    cfg = configlib.load(written.recipe)  # a valid recipe for the core
    assert (cfg.task.plugin, cfg.task.name) == ("demo", "gauss")
    assert {"snip", "synflow"} <= set(cfg.arms)  # the pruning-at-init hooks exercised


def test_the_written_task_passes_the_conformance_kit(tmp_path):
    """In this process, without installing: the template's task as the kit sees it, and its option errors."""
    scaffold.new_plugin("inproc", tmp_path)
    spec = importlib.util.spec_from_file_location("inproc_plugin", tmp_path / "ticketx-inproc/ticketx_inproc/plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.Plugin()
    check_task(plugin.make_task("gauss", {}, data_root=None), plugin="inproc", tmp_dir=tmp_path)
    from ticketx.task import TaskError
    with pytest.raises(TaskError, match=r"unknown option\(s\) \['hiden'\]; its options are"):
        plugin.make_task("gauss", {"hiden": 3}, data_root=None)
    with pytest.raises(TaskError, match=r"task\.hidden must be an integer >= 1, got '64'"):
        plugin.make_task("gauss", {"hidden": "64"}, data_root=None)
    with pytest.raises(TaskError, match="plugin 'inproc' has no task 'blobs'; its tasks: gauss"):
        plugin.make_task("blobs", {}, data_root=None)


def test_a_non_empty_folder_is_refused_and_left_as_it_was(tmp_path):
    root = tmp_path / "ticketx-demo"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(scaffold.ScaffoldError, match="ticketx-demo already exists and is not an empty folder; "
                                                     "nothing was written"):
        scaffold.new_plugin("demo", tmp_path)
    assert tree(root) == {"notes.txt"} and (root / "notes.txt").read_text() == "mine"


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "ticketx-demo").write_text("x")
    with pytest.raises(scaffold.ScaffoldError, match="already exists and is not an empty folder"):
        scaffold.new_plugin("demo", tmp_path)


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "ticketx-demo").mkdir()
    assert tree(scaffold.new_plugin("demo", tmp_path).root) == FILES


def test_a_write_failing_half_way_leaves_nothing(tmp_path, monkeypatch):
    real, calls = Path.write_text, []

    def failing(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(scaffold.ScaffoldError, match="could not write the plugin to .*No space left on device"):
        scaffold.new_plugin("demo", tmp_path)
    assert not (tmp_path / "ticketx-demo").exists()


def test_templates_are_all_used_and_shipped_as_package_data():
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ticketx"]
    templates = {p.relative_to(ROOT / "ticketx").as_posix() for p in (ROOT / "ticketx/templates").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert {f"templates/plugin/{t}" for t in scaffold.LAYOUT.values()} == templates
    assert all(any(fnmatch.fnmatch(t, pattern) for pattern in shipped) for t in templates)


def test_next_commands_name_this_environment_and_paths_as_typed(tmp_path, monkeypatch):
    written = scaffold.new_plugin("demo", tmp_path / "my plugins")
    bin_dir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", str(bin_dir))  # this environment's python and ticketx come first: bare names
    assert scaffold.next_commands(written, cwd=tmp_path) == [
        "python -m pip install -e 'my plugins/ticketx-demo'",
        "ticketx find 'my plugins/ticketx-demo/recipes/demo.toml'",
        "python -m pytest 'my plugins/ticketx-demo/tests'",
    ]
    monkeypatch.setenv("PATH", "")  # another environment active: this one's programs by their paths
    install, find, test = scaffold.next_commands(written, cwd=tmp_path / "elsewhere")
    assert install == f"{bin_dir / 'python'} -m pip install -e '{tmp_path}/my plugins/ticketx-demo'"
    assert find.startswith(f"{bin_dir / 'ticketx'} find '{tmp_path}/my plugins/ticketx-demo/recipes/demo.toml'")
    assert test == f"{bin_dir / 'python'} -m pytest '{tmp_path}/my plugins/ticketx-demo/tests'"


def test_cli_writes_and_prints_what_to_type_next(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("plugin", "new", "demo", "--dir", "out")
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "out/ticketx-demo") == FILES
    assert "wrote plugin 'demo' (task gauss) in out/ticketx-demo:" in r.output
    assert "  ticketx_demo/plugin.py" in r.output
    tail = r.output.split("next, install it, search it, test it:\n")[1].splitlines()
    assert [line.split()[-1] for line in tail] == ["out/ticketx-demo", "out/ticketx-demo/recipes/demo.toml",
                                                   "out/ticketx-demo/tests"]


@pytest.mark.parametrize("args, match", [
    (["Demo"], "Error: plugin name 'Demo': use lowercase letters"),
    (["vision"], "Error: a plugin named 'vision' is already installed"),
    (["demo", "--dir", "taken"], "Error: taken/ticketx-demo already exists and is not an empty folder"),
])
def test_cli_errors_are_one_line_with_status_1(tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TICKETX_PLUGINS", "vision=ticketx_vision.plugin:VisionPlugin")  # installed or not
    (tmp_path / "taken/ticketx-demo").mkdir(parents=True)
    (tmp_path / "taken/ticketx-demo/x").write_text("")
    r = invoke("plugin", "new", *args)
    assert r.exit_code == 1 and r.output.startswith(match) and len(r.output.splitlines()) == 1, r.output
    assert tree(tmp_path) == {"taken/ticketx-demo/x"}


def test_help_explains_the_command():
    r = invoke("plugin", "new", "--help")
    assert r.exit_code == 0
    for words in ("ticketx-NAME", "ticketx_NAME", "entry-point", "--dir", "never overwritten", "check_task"):
        assert words in r.output
    assert "new" in invoke("plugin", "--help").output


def throwaway_env(where: Path) -> Path:
    """A virtual environment at `where` that sees this one's packages (torch, ticketx, pip, setuptools)
    through a .pth file but installs into its own site-packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
    python = where / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    Path(own, "_ticketx_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in ours if Path(d).is_dir()))
    return python


@pytest.mark.skipif(importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None,
                    reason="pip install -e needs pip and setuptools in the test environment")
def test_written_plugin_installs_lists_finds_and_passes_its_tests(tmp_path):
    """As a user types it: plugin new, pip install -e, ticketx tasks, ticketx find, pytest; offline, and
    without touching the environment the tests run in. Then without installing: TICKETX_PLUGINS."""
    python = throwaway_env(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("TICKETX_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PIP_NO_INDEX="1", PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    def run(*args: str, cwd: Path = tmp_path, exe: Path = python, extra: dict[str, str] | None = None):
        r = subprocess.run([str(exe), *args], cwd=cwd, env={**env, **(extra or {})}, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    run("-m", "ticketx", "plugin", "new", "demo")
    root = tmp_path / "ticketx-demo"
    run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(root))
    assert "demo  (distribution ticketx-demo 0.1.0 (ticketx_demo.plugin:Plugin))" in run("-m", "ticketx", "tasks")

    run("-m", "ticketx", "find", "ticketx-demo/recipes/demo.toml", "--out", "runs")
    [results] = (tmp_path / "runs").glob("demo-*/results.csv")
    with results.open() as f:
        rows = list(csv.DictReader(f))
    arms = ["ticket", "random_reinit", "random_prune", "snip", "synflow"]
    assert sorted((int(r["level"]), r["arm"]) for r in rows) == sorted(
        [(0, "dense")] + [(level, arm) for level in (1, 2) for arm in arms])

    assert "4 passed" in run("-m", "pytest", "-p", "no:cacheprovider", "tests/test_demo.py", cwd=root)

    # not installed: named in TICKETX_PLUGINS, found on PYTHONPATH (this environment, where it is not installed)
    listed = run("-m", "ticketx", "tasks", exe=Path(sys.executable),
                 extra={"TICKETX_PLUGINS": "demo=ticketx_demo.plugin:Plugin", "PYTHONPATH": str(root)})
    assert "demo  (TICKETX_PLUGINS (ticketx_demo.plugin:Plugin))" in listed
    with pytest.raises(importlib.metadata.PackageNotFoundError):  # installed in the throwaway one only
        importlib.metadata.distribution("ticketx-demo")
