"""Every shipped recipe parses, names only layers its model really has, and the commands in transfer
recipes' headers name find recipes that exist and the job folders those recipes write."""

import os
import re
from pathlib import Path

import pytest

from ticketx import config as C
from ticketx import plugins
from ticketx.task import DataError

ROOT = Path(__file__).parents[1]
DATA = Path(os.environ.get("TICKETX_DATA", ROOT.parent / "shared" / "data"))
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))


def kind(path: Path) -> type:
    return C.TransferConfig if "transfer" in C.read_recipe(path) else C.FindConfig


def test_recipes_exist():
    assert len(RECIPES) >= 20
    assert sum(kind(p) is C.TransferConfig for p in RECIPES) >= 7


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_is_valid(path: Path, tmp_path: Path):
    cfg = C.load(path, cls=kind(path))
    assert cfg.description, "a recipe names the paper and figure it reproduces"
    available = plugins.discover({})
    if cfg.task.plugin not in available:
        pytest.skip(f"plugin {cfg.task.plugin} not installed")
    try:  # no data is read to build a model of a known dataset
        task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options, available=available,
                                 data_root=tmp_path)
        prunable = task.prunable(task.build_model(cfg.seed))
    except DataError:  # a model sized by its data (a vocabulary)
        if not DATA.is_dir():
            pytest.skip(f"{cfg.task.plugin}/{cfg.task.name} sizes its model from data not found in {DATA}")
        task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options, available=available,
                                 data_root=DATA)
        prunable = task.prunable(task.build_model(cfg.seed))
    if isinstance(cfg, C.FindConfig):
        named = set(cfg.prune.layer_rates) | set(cfg.prune.exclude)
        assert named <= set(prunable), f"{sorted(named - set(prunable))} not in {sorted(prunable)}"


@pytest.mark.parametrize("path", [p for p in RECIPES if "ticketx transfer" in p.read_text()],
                         ids=lambda p: p.name)
def test_transfer_recipe_commands_fit_together(path: Path):
    text = path.read_text()
    find = re.search(r"ticketx find (\S+)", text)
    job = re.search(r"ticketx transfer ticketx-runs/(\S+)-\* --to (\S+)", text)
    assert job and job.group(2) == str(path.relative_to(ROOT))
    source_name = C.load(ROOT / find.group(1)).name if find else "quickstart"
    assert job.group(1) == source_name
