"""End to end through the core: a tiny IMP search with rewinding, and tickets transferred across
environments (CartPole -> Acrobot) and algorithms (A2C -> PPO), with a temporary MLflow store."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from rl_helpers import TINY
from click.testing import CliRunner
from safetensors.torch import load_file

from ticketx import config as C
from ticketx import transferjob as transferlib
from ticketx import ticket as T
from ticketx.cli import main
from ticketx.findjob import run_find
from ticketx.ticket import TicketError
from ticketx.tracking import Tracker
from ticketx.transferjob import resolve, run_transfer
from ticketx.transferjob import target_config as target_config_of
from ticketx.task import TaskError
from ticketx_rl.plugin import RLPlugin
from ticketx_rl.task import RLTask

ARMS = ("transferred", "random_ticket", "masks_reinit", "dense")
TRAIN = {"steps": 192, "batch_size": 32, "lr": 1e-3, "eval_every": 64}


def task_of(name: str, **over) -> RLTask:
    return RLPlugin().make_task(name, {**TINY[name], **over}, data_root=None)


def find_config(name: str, algorithm: str, **prune) -> C.FindConfig:
    return C.from_dict({"name": name, "task": {"plugin": "rl", "name": algorithm, **TINY[algorithm]},
                        "train": TRAIN, "prune": {"levels": 1, "rate": 0.5, **prune}})


def target_config(algorithm: str, **options) -> C.TransferConfig:
    return C.from_dict({"name": f"to-{algorithm}", "task": {"plugin": "rl", "name": algorithm,
                                                            **{**TINY[algorithm], **options}},
                        "train": {**TRAIN, "steps": 128}}, C.TransferConfig)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/m.db")


@pytest.fixture(scope="module")
def ppo_job(tmp_path_factory, tracker):
    """A finished two-level PPO search on CartPole, rewinding to env step 64 (one rollout)."""
    cfg = find_config("ppo-cartpole", "ppo", levels=2, rewind_step=64)
    return run_find(cfg, task_of("ppo"), tracker, root=tmp_path_factory.mktemp("find"), experiment="rl-find")


def test_find_end_to_end_with_rewinding(ppo_job):
    records = {(r["level"], r["arm"]): r for r in ppo_job.records}
    assert set(records) == {(0, "dense"), *((lv, a) for lv in (1, 2)
                                            for a in ("ticket", "random_reinit", "random_prune"))}
    assert records[(2, "ticket")]["density"] == pytest.approx(0.25, abs=0.01)
    for r in ppo_job.records:
        assert {"val_return", "test_return"} <= set(r["at_early_stop"]) and r["final"]["test_return"] > 0
    # the rewind point is θk captured through the observer at env step 64, and the ticket holds it
    rewind = load_file(str(ppo_job.job_dir / "r0" / "rewind.safetensors"))
    init = task_of("ppo").build_model(0).state_dict()
    assert not torch.equal(rewind["action_net.weight"], init["action_net.weight"])
    ticket = T.load(ppo_job.job_dir / "r0" / "L02" / "ticket")
    m = ticket.masks["mlp_extractor.policy_net.2.weight"]
    assert torch.equal(ticket.weights["mlp_extractor.policy_net.2.weight"],
                       rewind["mlp_extractor.policy_net.2.weight"] * m)
    assert ticket.meta["task"]["plugin"] == "rl" and ticket.meta["rewind_step"] == 64


def test_transfer_cartpole_to_acrobot_reinitialises_the_head(ppo_job, tracker, tmp_path, monkeypatch):
    starts = {}
    original = RLTask.train

    def spy(self, model, masks, plan, observer):
        starts[observer.info["arm"]] = ({k: v.clone() for k, v in model.state_dict().items()}, dict(masks))
        return original(self, model, masks, plan, observer)

    monkeypatch.setattr(RLTask, "train", spy)
    target = task_of("ppo", env="Acrobot-v1")
    sources = resolve(str(ppo_job.job_dir), tracker, target.metrics, levels="2", workdir=tmp_path)
    result = run_transfer(target_config("ppo", env="Acrobot-v1"), target, sources, tracker, root=tmp_path / "out",
                          experiment="rl-transfer-env")
    assert {r["arm"] for r in result.records} == set(ARMS)
    src = sources[0].ticket
    state, masks = starts["transferred"]
    head = target.head(target.build_model(0))
    fresh = target.build_model(0).state_dict()
    for name, value in state.items():
        if name in head:  # observation (6 vs 4) and action (3 vs 2) sizes: the target's own initialisation
            assert torch.equal(value, fresh[name]), name
        else:  # hidden layers: the CartPole ticket's rewound weights and masks
            assert torch.equal(value, src.weights[name]), name
    assert state["mlp_extractor.policy_net.0.weight"].shape == (16, 6) and state["action_net.weight"].shape == (3, 16)
    assert torch.equal(masks["mlp_extractor.policy_net.2.weight"], src.masks["mlp_extractor.policy_net.2.weight"])
    assert bool(masks["action_net.weight"].all())  # transfer.head = "dense"
    assert {r["arm"] for r in result.rows if "es_test_return_mean" in r} == set(ARMS)


def test_transfer_a2c_ticket_onto_ppo(tracker, tmp_path):
    a2c = run_find(find_config("a2c-cartpole", "a2c"), task_of("a2c"), tracker, root=tmp_path / "find",
                   experiment="rl-find-a2c")
    target = task_of("ppo")
    sources = resolve(str(a2c.job_dir), tracker, target.metrics, levels="1", workdir=tmp_path)
    assert sources[0].ticket.meta["task"]["task"] == "a2c"
    result = run_transfer(target_config("ppo"), target, sources, tracker, root=tmp_path / "out",
                          experiment="rl-transfer-algo")
    transferred = next(r for r in result.records if r["arm"] == "transferred")
    # same environment, same network: nothing but the head is re-initialised, and the masks are the ticket's
    assert transferred["density"] < 1.0
    assert transferred["layer_density"]["mlp_extractor.value_net.2.weight"] == pytest.approx(0.5)


def test_dqn_ticket_is_refused_by_ppo_before_anything_is_logged(tracker, tmp_path):
    dqn = run_find(find_config("dqn-cartpole", "dqn", levels=0), task_of("dqn"), tracker, root=tmp_path / "f",
                   experiment="rl-find-dqn")
    sources = resolve(str(dqn.job_dir / "r0" / "L00" / "ticket"), tracker, task_of("ppo").metrics, levels=None,
                      workdir=tmp_path)
    with pytest.raises(TaskError, match=r"found with dqn, which trains a Q-network \(dqn\); ppo trains an "
                                        r"actor-critic network \(ppo, a2c\). Tickets move between ppo and a2c"):
        run_transfer(target_config("ppo"), task_of("ppo"), sources, tracker, root=tmp_path / "o",
                     experiment="rl-refused")
    assert tracker.client.get_experiment_by_name("rl-refused") is None


def test_ticket_of_another_width_names_every_tensor(ppo_job, tracker, tmp_path):
    target = task_of("ppo", env="Acrobot-v1", net_arch=[8, 8])
    sources = resolve(str(ppo_job.job_dir), tracker, target.metrics, levels="1", workdir=tmp_path)
    with pytest.raises(TicketError) as e:
        run_transfer(target_config("ppo", env="Acrobot-v1", net_arch=[8, 8]), target, sources, tracker,
                     root=tmp_path, experiment="rl-mismatch")
    msg = str(e.value)
    assert "mlp_extractor.policy_net.2.weight: ticket shape (16, 16), model shape (8, 8)" in msg
    assert "mlp_extractor.value_net.2.bias: ticket shape (16,), model shape (8,)" in msg
    assert "the head rule re-initialised ['action_net.bias', 'action_net.weight'" in msg
    assert tracker.client.get_experiment_by_name("rl-mismatch") is None


# ------------------------------------------------------------------ transfer across algorithms by name

def test_to_a2c_by_name_drops_ppo_only_options_and_says_so(ppo_job, caplog):
    src = T.load(ppo_job.job_dir / "r0" / "L01" / "ticket")
    assert {"clip_range", "n_epochs"} <= set(src.meta["task"]["options"])
    with caplog.at_level("WARNING", logger="ticketx.transferjob"):
        cfg = target_config_of("rl/a2c", src, ["task.gae_lambda=0.9"])
    opts = cfg.task.options
    assert (cfg.task.plugin, cfg.task.name) == ("rl", "a2c")
    assert "clip_range" not in opts and "n_epochs" not in opts
    # what both algorithms take stays the source's (the network above all), --set applies afterwards
    assert opts["net_arch"] == [16, 16] and opts["n_steps"] == 32 and opts["n_envs"] == 2
    assert opts["gae_lambda"] == 0.9
    message = ("rl/a2c does not take the source rl/ppo ticket's task option(s) clip_range, n_epochs: dropped "
               "(the target's defaults apply)")
    assert message in caplog.text and message in cfg.description
    task = RLPlugin().make_task("a2c", opts, data_root=None)  # the plugin takes what is left
    assert task.spec()["options"]["net_arch"] == [16, 16]
    with pytest.raises(TaskError, match=r"task.clip_range applies to ppo only, got 0.1 for a2c"):
        cfg = target_config_of("rl/a2c", src, ["task.clip_range=0.1"])  # asked for by name: refused
        RLPlugin().make_task("a2c", cfg.task.options, data_root=None)


def test_to_ppo_by_name_keeps_every_a2c_option(tmp_path, caplog):
    meta = {"task": task_of("a2c").spec(), "train": TRAIN}
    with caplog.at_level("WARNING", logger="ticketx.transferjob"):
        cfg = target_config_of("rl/ppo", T.Ticket(masks={}, weights={}, meta=meta), [])
    assert cfg.task.options == {k: v for k, v in meta["task"]["options"].items()}  # a2c's are a subset of ppo's
    assert not caplog.text
    assert RLPlugin().make_task("ppo", cfg.task.options, data_root=None).options.n_steps == 8


def test_task_options_name_what_each_algorithm_takes():
    plugin = RLPlugin()
    assert set(plugin.task_options("ppo")) - set(plugin.task_options("a2c")) == {"clip_range", "n_epochs"}
    assert "buffer_size" in plugin.task_options("dqn") and "n_steps" not in plugin.task_options("dqn")
    for name in ("ppo", "a2c", "dqn"):  # every option a task records is one it takes
        assert set(task_of(name).spec()["options"]) == set(plugin.task_options(name))
    with pytest.raises(TaskError, match=r"got 'sac'"):
        plugin.task_options("sac")


def test_cli_transfer_ppo_ticket_to_a2c_by_name(ppo_job, tracker, tmp_path, monkeypatch, caplog):
    caplog.set_level("WARNING", logger="ticketx.transferjob")  # printed on stderr where logging is not set up
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    monkeypatch.chdir(tmp_path)
    titles = []
    original = transferlib.plot
    monkeypatch.setattr(transferlib, "plot", lambda rows, spec, path, title: (titles.append(title),
                                                                              original(rows, spec, path, title))[1])
    r = CliRunner().invoke(main, ["transfer", str(ppo_job.job_dir), "--to", "rl/a2c", "--levels", "1",
                                  "--set", "train.steps=128", "--workers", "1", "--experiment", "rl-cli-a2c"])
    assert r.exit_code == 0, r.output
    assert "does not take the source rl/ppo ticket's task option(s) clip_range, n_epochs: dropped" in caplog.text
    assert "onto rl/a2c" in r.output
    lines = r.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("level  density"))
    assert {line.split()[2] for line in lines[header + 2: header + 6]} == set(ARMS)
    # the figure names both environments, not only the algorithms
    assert titles == ["ticket of rl/ppo on CartPole-v1 -> rl/a2c on CartPole-v1\nadam, lr 0.001"]


def test_cli_ticket_of_another_shape_fails_before_any_run(ppo_job, tracker, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["transfer", str(ppo_job.job_dir), "--to", "rl/ppo", "--levels", "1",
                                  "--set", "task.net_arch=[8, 8]", "--experiment", "rl-cli-shape"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "mlp_extractor.policy_net.2.weight: ticket shape (16, 16), model shape (8, 8)" in r.output
    assert tracker.client.get_experiment_by_name("rl-cli-shape") is None


def test_dropped_options_are_printed_by_a_real_process(ppo_job):
    """Where logging is not configured (the ticketx command), the warning goes to stderr as it is."""
    code = ("from ticketx import ticket, transferjob; "
            f"transferjob.target_config('rl/a2c', ticket.load({str(ppo_job.job_dir / 'r0' / 'L01' / 'ticket')!r}), [])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("rl/a2c does not take the source rl/ppo ticket's task option(s) clip_range, "
                                  "n_epochs: dropped")
