"""Every shipped recipe parses, and names only layers its model really has."""

from pathlib import Path

import pytest

from ticketx import config as C
from ticketx import plugins

RECIPES = sorted((Path(__file__).parents[1] / "recipes").rglob("*.toml"))


def test_recipes_exist():
    assert len(RECIPES) >= 11


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_is_valid(path: Path, tmp_path: Path):
    cfg = C.load(path)
    assert cfg.description, "a recipe names the paper and figure it reproduces"
    available = plugins.discover({})
    if cfg.task.plugin not in available:
        pytest.skip(f"plugin {cfg.task.plugin} not installed")
    task = plugins.make_task(cfg.task.plugin, cfg.task.name, cfg.task.options, available=available,
                             data_root=tmp_path)  # no data is read to build a model of a known dataset
    prunable = task.prunable(task.build_model(cfg.seed))
    named = set(cfg.prune.layer_rates) | set(cfg.prune.exclude)
    assert named <= set(prunable), f"{sorted(named - set(prunable))} not in {sorted(prunable)}"
