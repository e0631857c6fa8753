"""Bad recipes and `--set` values through `ticketx find`: exit status 1, one line naming the key, no traceback.

tests/test_config.py checks the config rules on `config.from_dict` and `parse_override`; this table goes
through the command line (recipe files and `--set`), with keys and values that table does not use.
`make faults` runs the same table and prints how many cases fail as they should (tests/faults).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ticketx.cli import main

TEMPLATE = """name = "bad"
{top}
[task]
plugin = "toy"
name = "gauss"
[train]
steps = 20
{train}
[prune]
{prune}
{tail}
"""

# (what, lines added to the recipe by section, --set values, a part of the one-line error)
CASES: list[tuple[str, dict[str, str], list[str], str]] = [
    # wrong types
    ("string for an integer", {"train": 'batch_size = "32"'}, [], "train.batch_size must be an integer, got '32'"),
    ("float for an integer", {"train": "eval_every = 2.5"}, [], "train.eval_every must be an integer, got 2.5"),
    ("string for a number", {"train": 'momentum = "0.9"'}, [], "train.momentum must be a number, got '0.9'"),
    ("integer for a boolean", {"train": "nesterov = 1"}, [], "train.nesterov must be true or false, got 1"),
    ("bare word for a boolean", {}, ["train.nesterov=True"], "train.nesterov must be true or false, got 'True'"),
    ("number for a list", {"train": "milestones = 500"}, [], "train.milestones must be a list of an integer, got 500"),
    ("string in a list of integers", {"train": 'milestones = [100, "200"]'}, [],
     "train.milestones[1] must be an integer, got '200'"),
    ("list for a number", {"train": "weight_decay = [0.1]"}, [], "train.weight_decay must be a number, got [0.1]"),
    ("learning-rate grid in a find recipe", {"train": "lr = [0.1, 0.01]"}, [],
     "train.lr must be a number, got [0.1, 0.01]"),
    ("string for a list of names", {"prune": 'exclude = "0.weight"'}, [], "prune.exclude must be a list of a string"),
    ("list for a table", {"prune": "layer_rates = [0.1]"}, [], "prune.layer_rates must be a table, got [0.1]"),
    ("string in a table of rates", {"prune": 'layer_rates = { "0.weight" = "half" }'}, [],
     "prune.layer_rates.0.weight must be a number, got 'half'"),
    ("unquoted dotted layer name", {}, ["prune.layer_rates={0.weight = 0.1}"],
     "prune.layer_rates.0 must be a number, got {'weight': 0.1}"),
    ("float for the level count", {"prune": "levels = 2.0"}, [], "prune.levels must be an integer, got 2.0"),
    ("number for a choice", {"prune": "scope = 1"}, [], "prune.scope must be 'layerwise' or 'global', got 1"),
    ("string for the arms", {"top": 'arms = "ticket"'}, [], "arms must be a list of a string, got 'ticket'"),
    ("string for the replicates", {"top": 'replicates = "2"'}, [], "replicates must be an integer, got '2'"),
    ("float for the data seed", {"top": "data_seed = 1.5"}, [], "data_seed must be an integer or nothing, got 1.5"),
    ("number for the name", {"top": "description = 5"}, [], "description must be a string, got 5"),
    ("number for a section", {}, ["prune=3"], "prune must be a table, got 3"),
    ("number for the task name", {}, ["task.name=7"], "task.name must be a string, got 7"),
    ("a key below a value", {}, ["train.steps.max=5"], "--set train.steps.max: steps is not a table"),
    # unknown keys
    ("unknown top-level key", {"top": "seeds = 3"}, [], "unknown key(s): seeds (did you mean seed?)"),
    ("unknown train key", {"train": "optimiser = \"sgd\""}, [], "train.optimiser (did you mean train.optimizer?)"),
    ("unknown prune key", {"prune": "ratio = 0.2"}, [], "prune.ratio (did you mean prune.rate?)"),
    ("unknown key, no near match", {"train": "epochs = 3"}, [], "unknown key(s): train.epochs; valid keys here:"),
    ("transfer section in a find recipe", {"tail": '[transfer]\nhead = "dense"'}, [], "unknown key(s): transfer"),
    ("unknown sub-table", {"tail": "[prune.schedule]\nx = 1"}, [], "unknown key(s): prune.schedule"),
    ("unknown key by --set", {}, ["train.warmup=100"], "train.warmup (did you mean train.warmup_steps?)"),
    # out of range
    ("zero batch size", {"train": "batch_size = 0"}, [], "train.batch_size must be >= 1, got 0"),
    ("negative evaluation interval", {"train": "eval_every = -5"}, [], "train.eval_every must be >= 1, got -5"),
    ("negative momentum", {"train": "momentum = -0.9"}, [], "train.momentum must be >= 0, got -0.9"),
    ("negative weight decay", {"train": "weight_decay = -1e-4"}, [], "train.weight_decay must be >= 0"),
    ("negative warmup", {"train": "warmup_steps = -10"}, [], "train.warmup_steps must be >= 0, got -10"),
    ("negative gradient clip", {"train": "clip_grad_norm = -1.0"}, [], "train.clip_grad_norm must be >= 0"),
    ("negative decay factor", {"train": "gamma = -0.1"}, [], "train.gamma must be > 0"),
    ("negative milestone", {"train": "milestones = [-5, 10]"}, [], "train.milestones must be steps >= 0"),
    ("nan learning rate", {"train": "lr = nan"}, [], "train.lr must be a finite number, got nan"),
    ("infinite learning rate", {}, ["train.lr=inf"], "train.lr must be a finite number, got inf"),
    ("nan momentum", {"train": "momentum = nan"}, [], "train.momentum must be a finite number, got nan"),
    ("negative pruning rate", {"prune": "rate = -0.2"}, [], "prune.rate must be in (0, 1), got -0.2"),
    ("negative layer rate", {"prune": 'layer_rates = { "0.weight" = -0.1 }'}, [],
     "prune.layer_rates.0.weight must be in [0, 1), got -0.1"),
    ("negative rewind step", {"prune": "rewind_step = -1"}, [], "prune.rewind_step must be >= 0, got -1"),
    ("negative seed", {"top": "seed = -1"}, [], "seed must be in [0, 2147483648), got -1"),
    ("seed past 64 bits", {}, ["seed=18446744073709551616"], "seed must be in [0, 2147483648)"),
    ("negative replicates", {"top": "replicates = -2"}, [], "replicates must be >= 1, got -2"),
    ("layer rate for a layer the task lacks", {"prune": 'layer_rates = { "fc9.weight" = 0.1 }'}, [],
     "prune.layer_rates names ['fc9.weight'], which the task does not prune"),
    ("excluded layer the task lacks", {"prune": 'exclude = ["nope"]'}, [], "prune.exclude names ['nope']"),
    # --set values that are not TOML
    ("comma decimal", {}, ["train.lr=0,1"], "--set train.lr: '0,1' is not a valid TOML value"),
    ("dangling underscore", {}, ["train.steps=1_000_"], "--set train.steps: '1_000_' is not a valid TOML value"),
    ("bare words in a list", {}, ["arms=[ticket]"], "--set arms: '[ticket]' is not a valid TOML value"),
    ("unterminated string", {}, ['name="unterminated'], "is not a valid TOML value"),
    ("half an exponent", {}, ["train.lr=1e"], "--set train.lr: '1e' is not a valid TOML value"),
    ("unclosed table", {}, ["prune.layer_rates={"], "--set prune.layer_rates: '{' is not a valid TOML value"),
    # the recipe file itself
    ("key given twice", {"top": "seed = 1\nseed = 2"}, [], "is not valid TOML"),
]


def run_case(where: Path, sections: dict[str, str], overrides: list[str], expected: str) -> str | None:
    """Run one case through `ticketx find`; None when it fails as it should, else what was wrong."""
    recipe = where / "bad.toml"
    recipe.write_text(TEMPLATE.format(**{k: sections.get(k, "") for k in ("top", "train", "prune", "tail")}))
    r = CliRunner().invoke(main, ["find", str(recipe), "--workers", "1", *(a for s in overrides for a in ("--set", s))])
    err = [line for line in r.stderr.splitlines() if line.strip()]
    if not isinstance(r.exception, SystemExit) or r.exit_code != 1:
        return f"exit {r.exit_code}, {type(r.exception).__name__}: {r.exception}"
    if len(err) != 1 or not err[0].startswith("Error: ") or "Traceback" in r.output:
        return f"not one error line: {r.stderr[-300:]!r}"
    if expected not in err[0]:
        return f"{err[0]!r} does not say {expected!r}"
    return None


@pytest.mark.parametrize("what, sections, overrides, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_one_clear_error(cli_env, tmp_path, what, sections, overrides, expected):
    assert run_case(tmp_path, sections, overrides, expected) is None


def test_the_table_is_large_and_the_base_recipe_is_good(tmp_path):
    from ticketx import config
    assert len(CASES) >= 30
    recipe = tmp_path / "good.toml"
    recipe.write_text(TEMPLATE.format(top="", train="", prune="", tail=""))
    assert config.load(recipe).train.steps == 20  # every case's error comes from its own edit
