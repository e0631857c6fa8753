"""LSTM language models and LSTM text classifiers, and which of their weights are pruned.

Both use `nn.LSTM`, whose per-layer weights `rnn.weight_ih_l{k}` (4H, in) and `rnn.weight_hh_l{k}` (4H, H)
stack the input, forget, cell and output gates (in that order, PyTorch's layout); each is one prunable
matrix, pruned over all four gates together. On CPU nn.LSTM reads these very Parameters at every call
(its `_flat_weights` list holds references to them), so the core's in-place multiply by the mask after
each optimizer step is what the next forward pass sees (tested: test_nlp_models.py). On CUDA, cuDNN's
`flatten_parameters()` re-points the Parameters into one flat buffer, so an in-place multiply should reach
it as well; untested here (the build machines have no GPU).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PAD = -1  # classify: padding id in (N, max_len) inputs; never looked up (ids are clamped, outputs gathered)
State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, B, H)


class BiasOnly(nn.Module):
    """The decoder of a tied model: only a bias; its weight is the embedding matrix."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class LSTMLanguageModel(nn.Module):
    """Embedding -> dropout -> L-layer LSTM (dropout between layers) -> dropout -> linear decoder.

    Zaremba et al. 2014's regularised LSTM (dropout on non-recurrent connections only), the model Yu et al.
    2019 sec. 3.2 prune. With `tie_weights` the decoder has no weight of its own: it multiplies by
    `encoder.weight` (Press & Wolf 2017), so the state holds the matrix once and a mask on it prunes both.
    """

    def __init__(self, vocab_size: int, emb_size: int, hidden_size: int, layers: int, dropout: float,
                 tie_weights: bool) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emb_size)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(emb_size, hidden_size, layers, dropout=dropout if layers > 1 else 0.0)
        self.tied = tie_weights
        self.decoder: nn.Module = BiasOnly(vocab_size) if tie_weights else nn.Linear(hidden_size, vocab_size)

    def decoder_weight(self) -> torch.Tensor:
        """(V, H): the decoder's own weight, or the embedding matrix when tied."""
        return self.encoder.weight if self.tied else self.decoder.weight

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (T, B, V) for token ids `x` (T, B), and the LSTM state after the last step."""
        e = self.drop(self.encoder(x))  # (T, B, E)
        out, state = self.rnn(e, state)  # (T, B, H); state: (h, c) each (layers, B, H)
        return F.linear(self.drop(out), self.decoder_weight(), self.decoder.bias), state


class LSTMClassifier(nn.Module):
    """Embedding -> dropout -> L-layer LSTM -> the output at each sentence's last token -> dropout -> linear."""

    def __init__(self, vocab_size: int, classes: int, emb_size: int, hidden_size: int, layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emb_size)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(emb_size, hidden_size, layers, dropout=dropout if layers > 1 else 0.0, batch_first=True)
        self.classifier = nn.Linear(hidden_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) for token ids `x` (B, L) padded with PAD after each sentence."""
        lengths = (x != PAD).sum(dim=1)  # (B,), at least 1 per sentence
        x = x[:, : int(lengths.max())].clamp(min=0)  # (B, L') trimmed to the batch's longest sentence
        out, _ = self.rnn(self.drop(self.encoder(x)))  # (B, L', H)
        # a unidirectional LSTM's output at the last real token never saw the padding after it
        last = out[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, H)
        return self.classifier(self.drop(last))


@torch.no_grad()
def init_lm(model: LSTMLanguageModel, *, init_range: float = 0.1) -> None:
    """Embedding and decoder U(-0.1, 0.1), decoder bias 0 (PyTorch's word_language_model, Merity et al.);
    the LSTM keeps PyTorch's U(-1/sqrt(H), 1/sqrt(H))."""
    nn.init.uniform_(model.encoder.weight, -init_range, init_range)
    if not model.tied:
        nn.init.uniform_(model.decoder.weight, -init_range, init_range)
    nn.init.zeros_(model.decoder.bias)


@torch.no_grad()
def init_classifier(model: LSTMClassifier, *, init_range: float = 0.1) -> None:
    """Embedding U(-0.1, 0.1); LSTM and output layer keep PyTorch's defaults except a zero output bias."""
    nn.init.uniform_(model.encoder.weight, -init_range, init_range)
    nn.init.zeros_(model.classifier.bias)


def lstm_weights(rnn: nn.LSTM, prefix: str = "rnn") -> dict[str, nn.Parameter]:
    """Every input and recurrent matrix of an nn.LSTM (all gates), by parameter name; never biases."""
    out: dict[str, nn.Parameter] = {}
    for k in range(rnn.num_layers):
        for kind in ("ih", "hh"):
            name = f"weight_{kind}_l{k}"
            out[f"{prefix}.{name}"] = getattr(rnn, name)
    return out


def lm_prunable(model: LSTMLanguageModel, *, embeddings: bool) -> dict[str, nn.Parameter]:
    """The LSTM matrices, and the embedding and decoder matrices when `embeddings` (Yu et al. prune all)."""
    out: dict[str, nn.Parameter] = {}
    if embeddings:
        out["encoder.weight"] = model.encoder.weight
    out.update(lstm_weights(model.rnn))
    if embeddings and not model.tied:  # tied: the decoder's matrix is encoder.weight, already listed
        out["decoder.weight"] = model.decoder.weight
    return out


def classifier_prunable(model: LSTMClassifier, *, embeddings: bool) -> dict[str, nn.Parameter]:
    """The LSTM matrices and the output layer's weight, and the embedding when `embeddings`."""
    out: dict[str, nn.Parameter] = {"encoder.weight": model.encoder.weight} if embeddings else {}
    out.update(lstm_weights(model.rnn))
    out["classifier.weight"] = model.classifier.weight
    return out


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied matrix counted once)."""
    return sum(p.numel() for p in model.parameters())


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy in nats per token); inf where that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
