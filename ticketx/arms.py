"""Arms as data: one table of what trains beside what, read by find, transfer, report and the CLI.

An arm is named by where its masks and its weights come from. At each level L >= 1 of a find job:

    arm                  masks                                       weights
    ticket               IMP's, cut from level L-1's trained weights   θk (θ0 without rewinding)
    random_reinit        the ticket's                                  fresh init    (the ticket, reinitialised)
    random_prune         random, the ticket's per-layer counts         θk            (the ticket, shuffled in layers)
    <criterion>          the criterion's, cut from θk at the ticket's overall density       θk
    <criterion>:shuffled the criterion's, permuted within each layer                         θk
    <criterion>:reinit   the criterion's                                                     fresh init
    <criterion>:inverted the criterion's with the lowest scores kept                          θk

with <criterion> one of the criterion arms of `ticketx.pruning.CRITERIA` (snip, grasp, synflow,
magnitude_init, random_erk, random_uniform). The ablations are Frankle et al. 2021's (arXiv 2009.08576,
section 5); the IMP ticket's own are random_prune (shuffled) and random_reinit. Random draws are seeded
`seed + 1_000 * init seed + level`, with the arm's seed below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .pruning import CRITERIA

FRESH_SEED = 1_000_003  # fresh weights (random_reinit, :reinit ablations, transfer's fresh arms)
ABLATIONS = ("shuffled", "reinit", "inverted")


@dataclass(frozen=True)
class Arm:
    """One row of the arms table."""

    name: str
    order: int  # where it sorts in tables and figures
    masks: Literal["ones", "ticket", "random_like_ticket", "criterion", "source", "random_like_source", "target"]
    weights: Literal["init", "rewind", "fresh", "source", "target"]
    masks_seed: int | None = None  # random masks: Generator(masks_seed + 1_000 * init seed + level)
    weights_seed: int | None = None  # fresh weights: build_model(weights_seed + 1_000 * init seed + level)
    criterion: str | None = None  # the pruning.CRITERIA entry whose masks it trains (None: IMP's)
    ablation: str | None = None  # "shuffled", "reinit" or "inverted" (of `criterion`, or of the ticket)
    chain: bool = False  # next level's masks are cut from its trained weights (dense, ticket)
    colour: int = 0  # matplotlib's colour cycle C0..C9 in figures; an ablation has its criterion's

    @property
    def file(self) -> str:
        """Its file names' stem in a level folder (no ':' in file names)."""
        return self.name.replace(":", "-")

    @property
    def ticket_dir(self) -> str | None:
        """The folder, in its level's folder, of the ticket it trains (its masks and starting weights), for
        the arms whose masks are found there; None for the others."""
        if self.name == "ticket":
            return "ticket"
        return f"{self.file}.ticket" if self.masks == "criterion" else None

    @property
    def linestyle(self) -> str:
        return {"shuffled": ":", "reinit": "-.", "inverted": "--"}.get(self.ablation or "", "-") \
            if self.criterion else "-"


def _find_table() -> dict[str, Arm]:
    arms = [
        Arm("dense", 0, "ones", "init", chain=True, colour=0),
        Arm("ticket", 1, "ticket", "rewind", chain=True, colour=1),
        Arm("random_reinit", 2, "ticket", "fresh", weights_seed=FRESH_SEED, ablation="reinit", colour=2),
        Arm("random_prune", 3, "random_like_ticket", "rewind", masks_seed=2_000_003, ablation="shuffled", colour=3),
    ]
    for i, c in enumerate(c for c in CRITERIA.values() if c.arm):
        order, colour = 4 + 4 * i, (4 + i) % 10
        arms += [
            Arm(c.arm, order, "criterion", "rewind", criterion=c.name, colour=colour),  # type: ignore[arg-type]
            Arm(f"{c.arm}:shuffled", order + 1, "criterion", "rewind", masks_seed=6_000_011 + 100_003 * i,
                criterion=c.name, ablation="shuffled", colour=colour),
            Arm(f"{c.arm}:reinit", order + 2, "criterion", "fresh", weights_seed=FRESH_SEED, criterion=c.name,
                ablation="reinit", colour=colour),
            Arm(f"{c.arm}:inverted", order + 3, "criterion", "rewind", criterion=c.name, ablation="inverted",
                colour=colour),
        ]
    return {a.name: a for a in arms}


FIND: dict[str, Arm] = _find_table()
FIND_ARMS = tuple(a for a in FIND if a != "dense")  # what a find recipe's `arms` may list
DEFAULT_FIND_ARMS = ("ticket", "random_reinit", "random_prune")

TRANSFER: dict[str, Arm] = {a.name: a for a in (
    # the target's head is re-initialised (transfer.head); its random masks (transfer.head = "pruned") and
    # random_ticket's masks draw from masks_seed
    Arm("transferred", 0, "source", "source", masks_seed=3_000_017, colour=1),
    Arm("random_ticket", 1, "random_like_source", "fresh", masks_seed=3_000_017, weights_seed=FRESH_SEED, colour=3),
    Arm("masks_reinit", 2, "source", "fresh", masks_seed=3_000_017, weights_seed=FRESH_SEED, colour=2),
    Arm("target_ticket", 3, "target", "target", colour=4),  # with --compare: the target's own ticket at the level
    Arm("dense", 4, "ones", "init", colour=0),
)}
DEFAULT_TRANSFER_ARMS = ("transferred", "random_ticket", "masks_reinit", "dense")


def table(kind: str) -> dict[str, Arm]:
    """The arms of a job kind ("find" or "transfer")."""
    return TRANSFER if kind == "transfer" else FIND


def order(kind: str) -> dict[str, int]:
    """Arm name -> its place in tables and figures, for a job kind."""
    return {name: a.order for name, a in table(kind).items()}


def check_find_arms(names: tuple[str, ...]) -> str | None:
    """Why `names` is not a valid find `arms` list, in one line; None when it is."""
    bad = [a for a in names if a not in FIND_ARMS]
    if bad or not names:
        base = [c.arm for c in CRITERIA.values() if c.arm]
        imp_ablations = [a for a in bad if a.startswith("ticket:")]
        hint = ("; the ticket's own shuffled and reinit ablations are the random_prune and random_reinit arms"
                if imp_ablations else "")
        return (f"arms must be a non-empty list of ticket, random_reinit, random_prune, {', '.join(base)}, or "
                f"CRITERION:{'/'.join(ABLATIONS)} of those criteria (e.g. snip:shuffled), got {list(names)}{hint}")
    if "ticket" not in names:
        return "arms must include 'ticket': the next level's masks come from its training"
    return None
