"""Language-model batches: a token stream cut into `batch_size` columns and read in BPTT windows
(Zaremba et al. 2014; Merity et al. 2018), the LSTM state carried from one window to the next.

The stream of N tokens becomes a (N // B, B) matrix whose column b is the b-th contiguous 1/B of the
stream (the last N mod B tokens are dropped). Training window w reads rows [w*T, w*T + T) as inputs and
the same rows shifted by one as targets; an epoch is the W = (N // B - 1) // T whole windows (a partial
last window is dropped), and training step s reads window s mod W of epoch s // W. There is no shuffle and
no per-epoch offset: the batch of a step is a pure function of the step (the data seed only seeds
dropout), so a run rewound to step k reads exactly what the run it rewinds read from step k on.

The state is carried between consecutive windows of an epoch and detached (truncated BPTT). It starts at
zero at the first window of every epoch, and at the first step a run trains (a rewound run starts from a
zero state at step k, since the state the dense run had there came from other weights).

Everything stays on the device of the id stream (the training device): the batchified matrix, each
window (a slice of it) and the carried state, which the model returns where it runs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ticketx.task import TaskError

from .models import LSTMLanguageModel, State, perplexity


class StreamBatch(NamedTuple):
    """One training window: inputs and targets (T, B), and where it lies (epoch, window in the epoch)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    epoch: int
    window: int


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) ids -> (N // B, B): column b holds tokens [b * N // B, (b + 1) * N // B) of the stream."""
    rows = ids.shape[0] // batch_size
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()


class StreamBatches:
    """Training windows of a token stream: `batches(step)` is a pure function of `step`. The windows are
    slices of the batchified stream, on the device of `ids`."""

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int) -> None:
        self.data = batchify(ids, batch_size)  # (rows, B), on ids' device
        self.bptt = bptt
        self.per_epoch = (self.data.shape[0] - 1) // bptt  # whole windows per epoch
        if self.per_epoch < 1:
            raise TaskError(
                f"the training split has {ids.shape[0]} tokens: too few for one window of train.batch_size "
                f"{batch_size} x task.bptt {bptt} (needs at least {batch_size * (bptt + 1)} tokens)"
            )

    def __call__(self, step: int) -> StreamBatch:
        epoch, w = divmod(step, self.per_epoch)
        i = w * self.bptt
        return StreamBatch(self.data[i : i + self.bptt], self.data[i + 1 : i + 1 + self.bptt], epoch, w)


def steps_per_epoch(tokens: int, batch_size: int, bptt: int) -> int:
    """Training steps (windows) in one pass over `tokens` tokens: (tokens // B - 1) // T."""
    return (tokens // batch_size - 1) // bptt


class CarriedStateLoss:
    """The training loss of a language model, the LSTM state carried between consecutive windows.

    One object per training run: it remembers the (detached) state after the last window it saw, and uses
    it only when the next batch is the following window of the same epoch, so the result depends on the
    batches alone, not on how often or in which order it is called. The state stays where the model
    computed it (the training device). `state_dict` / `load_state_dict` let the core's checkpoints carry it
    across a resumed run, so the window after a checkpoint starts from the state it would have had.
    """

    def __init__(self) -> None:
        self.state: State | None = None
        self.last: tuple[int, int] | None = None  # (epoch, window) of the state kept

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "last": None if self.last is None else list(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        h = state.get("state")
        self.state = None if h is None else (h[0], h[1])  # moved to the batches' device when first used
        last = state.get("last")
        self.last = None if last is None else (int(last[0]), int(last[1]))

    def __call__(self, model: nn.Module, batch: StreamBatch) -> torch.Tensor:
        follows = self.last == (batch.epoch, batch.window - 1)
        state = self.state if follows else None
        if state is not None and state[0].device != batch.inputs.device:  # a checkpoint's, read on the CPU
            state = (state[0].to(batch.inputs.device), state[1].to(batch.inputs.device))
        logits, state = model(batch.inputs, state)  # (T, B, V)
        self.state = (state[0].detach(), state[1].detach())  # truncated BPTT: no gradient across windows
        self.last = (batch.epoch, batch.window)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))


@torch.no_grad()
def evaluate_stream(model: LSTMLanguageModel, ids: torch.Tensor, *, batch_size: int, bptt: int) -> dict[str, float]:
    """Mean cross-entropy (nats per token) and perplexity of `model` over a whole stream, state carried.

    The stream is cut into `batch_size` columns (the last N mod B tokens dropped) and read window by
    window, the last window possibly shorter, so every token but the first of each column is predicted
    exactly once; the loss is the mean over those predictions. `ids` must be on the model's device; the
    sum is accumulated there and read once, at the end.
    """
    was_training = model.training
    model.eval()
    data = batchify(ids, batch_size)  # (rows, B)
    if data.shape[0] < 2:
        raise TaskError(f"an evaluation split of {ids.shape[0]} tokens is too short for task.eval_batch_size "
                        f"{batch_size} (needs at least {2 * batch_size} tokens)")
    total, count, state = torch.zeros((), dtype=torch.float64, device=ids.device), 0, None
    for i in range(0, data.shape[0] - 1, bptt):
        n = min(bptt, data.shape[0] - 1 - i)
        logits, state = model(data[i : i + n], state)  # (n, B, V)
        y = data[i + 1 : i + 1 + n]  # (n, B)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").double()
        count += y.numel()
    model.train(was_training)
    loss = float(total) / count
    return {"loss": loss, "perplexity": perplexity(loss)}
