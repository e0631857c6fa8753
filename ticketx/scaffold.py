"""`ticketx plugin new`: write a task plugin that installs and runs as it is, for a plugin author to start from.

The files are rendered from templates in `ticketx/templates/plugin/` (package data): `{{key}}` is
replaced by the plugin's names, nothing else is interpreted. What is written is a distribution
`ticketx-NAME` with the package `ticketx_NAME`, whose entry point `NAME` (group `ticketx.plugins`) names
one task on synthetic data, a recipe that searches it in seconds, and tests that call
`ticketx.testing.check_task`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Collection
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from . import __version__

NAME = re.compile(r"[a-z][a-z0-9_]*\Z")

# where each template is written, relative to the plugin's folder ({package}, {name}: the plugin's)
LAYOUT = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    ".gitignore": "gitignore.tmpl",
    "{package}/__init__.py": "__init__.py.tmpl",
    "{package}/plugin.py": "plugin.py.tmpl",
    "recipes/{name}.toml": "recipe.toml.tmpl",
    "tests/test_{name}.py": "test_plugin.py.tmpl",
}


class ScaffoldError(ValueError):
    """A plugin cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class Written:
    """What `new_plugin` wrote: the plugin's folder and its files (relative to it), in writing order."""

    root: Path
    name: str
    files: tuple[Path, ...]

    @property
    def recipe(self) -> Path:
        return self.root / "recipes" / f"{self.name}.toml"


def check_name(name: str, taken: Collection[str] = ()) -> None:
    """Raise ScaffoldError unless `name` can be a plugin's entry-point name and the end of its package's
    name (`ticketx_NAME`): lowercase letters, digits and underscores, starting with a letter, and not the
    name of a plugin already installed (`taken`), which the new one would clash with."""
    if not NAME.match(name):
        hint = re.sub(r"[^a-z0-9_]", "_", name.lower()).lstrip("_0123456789")
        raise ScaffoldError(f"plugin name {name!r}: use lowercase letters, digits and underscores, starting with "
                            f"a letter (it becomes the package ticketx_NAME)" + (f", e.g. {hint!r}" if hint else ""))
    if name in taken:
        raise ScaffoldError(f"a plugin named {name!r} is already installed (ticketx tasks lists it); "
                            "two plugins of one name clash: pick another name")


def render(name: str) -> dict[Path, str]:
    """The plugin's files, path relative to its folder -> text."""
    keys = {"name": name, "package": f"ticketx_{name}", "dist": f"ticketx-{name}",
            "ticketx_version": __version__}
    templates = files(__package__) / "templates" / "plugin"
    out = {}
    for target, source in LAYOUT.items():
        text = (templates / source).read_text(encoding="utf-8")
        for key, value in keys.items():
            text = text.replace("{{" + key + "}}", value)
        out[Path(target.format(**keys))] = text
    return out


def new_plugin(name: str, parent: Path, *, taken: Collection[str] = ()) -> Written:
    """Write the plugin `name` to `parent/ticketx-NAME/` and return what was written.

    Raises ScaffoldError, having written nothing, for a name `check_name` refuses or a target folder that
    exists and is not empty (nothing is ever overwritten); where writing fails half-way, what was written
    is removed again.
    """
    check_name(name, taken)
    root = parent / f"ticketx-{name}"
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise ScaffoldError(f"{root} already exists and is not an empty folder; nothing was written "
                            "(remove it, or pick another --dir or name)")
    texts = render(name)  # every file rendered before the first is written
    made = not root.exists()
    try:
        for path, text in texts.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text, encoding="utf-8")
    except OSError as e:
        if made:
            shutil.rmtree(root, ignore_errors=True)
        else:  # the folder was there, empty: leave it so
            for child in root.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise ScaffoldError(f"could not write the plugin to {root}: {e}") from None
    return Written(root=root, name=name, files=tuple(texts))


def next_commands(written: Written, cwd: Path | None = None) -> list[str]:
    """The three commands that install, run and test the plugin, as typed in `cwd`: with this
    interpreter's environment (its full path unless it is the `python` and `ticketx` found first on PATH)."""
    cwd = Path.cwd() if cwd is None else cwd
    python, ticketx = _command("python", cwd), _command("ticketx", cwd)
    root = _shown(written.root, cwd)
    return [f"{python} -m pip install -e {root}",
            f"{ticketx} find {_shown(written.recipe, cwd)}",
            f"{python} -m pytest {_shown(written.root / 'tests', cwd)}"]


def _command(program: str, cwd: Path) -> str:
    """`program` as typed: the bare name where PATH finds it in this interpreter's bin folder, else its path
    there; for `ticketx` without a script there, `python -m ticketx`."""
    bin_dir = Path(sys.executable).parent  # not resolved: a virtual environment's python is a link
    found = shutil.which(program)
    if found and Path(found).parent.absolute() == bin_dir.absolute():
        return program
    if (bin_dir / program).exists():
        return _shown(bin_dir / program, cwd)
    if program == "ticketx":
        return f"{_command('python', cwd)} -m ticketx"
    return _shown(Path(sys.executable), cwd)


def _shown(path: Path, cwd: Path) -> str:
    """`path` relative to `cwd` where it lies under it, else absolute; quoted for a shell where needed."""
    path = path.absolute()
    try:
        path = path.relative_to(cwd.absolute())
    except ValueError:
        pass
    return shlex.quote(str(path))
