"""The NLP tasks as the core's Task protocol asks: LSTM language models and LSTM text classifiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketx.devices import canonical, rng_devices
from ticketx.task import DataError, Masks, MetricSpec, Observer, Plan, TaskError
from ticketx.training import EpochBatches, balanced_sample, cross_entropy_loss, evaluate_classifier, fit, prefixed

from . import vocab as vocablib
from .batching import CarriedStateLoss, StreamBatches, evaluate_stream, steps_per_epoch
from .data import (
    LabelledSplits, TokenSplits, load_char_corpus, load_mr, load_sst, load_tsv_folder, load_word_corpus,
)
from .models import (
    PAD, LSTMClassifier, LSTMLanguageModel, classifier_prunable, init_classifier, init_lm, lm_prunable,
)
from .options import ClassifyOptions, LMOptions
from .vocab import Vocab

LM_METRICS = MetricSpec(primary="perplexity", higher_is_better=False, early_stop="val_loss")
LM_SCORING_WINDOWS = 10  # a language model's scoring sample: this many windows per `n_per_class` (see below)


def no_synflow(task: str) -> TaskError:
    """Why SynFlow's data-free score does not apply to these tasks."""
    return TaskError(f"nlp/{task} cannot score SynFlow: its all-ones input is one token id repeated, so the "
                     "score would rank the weights of a single embedding row; drop the synflow arms")


def corpus_path(root: Path, corpus: str) -> tuple[Path, str]:
    """`corpus` under the data root (an absolute path stays as it is), and how to name it in messages."""
    path = root / Path(corpus).expanduser()
    shown = f"task.corpus = {corpus!r}" + ("" if Path(corpus).is_absolute() else f" under the data root {root}")
    return path, shown


def resolve_vocab(vocab_from: str, kind: str, tokens: Sequence[str], *, min_freq: int, max_vocab: int) -> Vocab:
    """The vocabulary of `vocab_from` (a ticket or find job folder) if given, else built from `tokens`."""
    if not vocab_from:
        return vocablib.build(tokens, kind=kind, min_freq=min_freq, max_vocab=max_vocab)
    vocab = vocablib.from_ticket(Path(vocab_from))
    if vocab.kind != kind:
        raise TaskError(f"task.vocab_from = {vocab_from!r} holds a {vocab.kind}-level vocabulary; this task "
                        f"tokenises at {kind} level")
    return vocab


def ticket_vocab(meta: Mapping[str, Any]) -> tuple[str | None, str]:
    """The sha256 of the vocabulary a ticket's metadata records (None if none), and a description of it."""
    src = meta.get("task")
    src = src if isinstance(src, dict) else {}
    sha = src.get("vocab_sha256")
    if not isinstance(sha, str) or not sha:
        return None, "none recorded: not an nlp ticket"
    return sha, f"{src.get('vocab_size', '?')} {src.get('vocab_kind', '?')} tokens, sha256 {sha[:12]}"


def check_vocab_source(meta: Mapping[str, Any], vocab: Vocab, *, keeps_embeddings: bool) -> None:
    """Raise TaskError when a ticket's embedding would be kept on a vocabulary other than its own."""
    if not keeps_embeddings:  # embedding and decoder are head: re-initialised on the target's vocabulary
        return
    sha, theirs = ticket_vocab(meta)
    if sha == vocab.sha256:
        return
    raise TaskError(
        f"the ticket's vocabulary ({theirs}) differs from this task's ({vocab.describe()}), and "
        "task.transfer_embeddings = true keeps the ticket's embedding and decoder, whose rows belong to the "
        "ticket's tokens: set task.vocab_from to the ticket's folder to use its vocabulary here, or "
        "task.transfer_embeddings = false to re-initialise them on this task's vocabulary"
    )


def check_ticket_vocab(meta: Mapping[str, Any], vocab: Vocab, source: str) -> None:
    """Raise TaskError unless a ticket was found on exactly `vocab` (for loading it whole, embedding included)."""
    sha, theirs = ticket_vocab(meta)
    if sha == vocab.sha256:
        return
    if sha is None:
        raise TaskError(f"vocabulary mismatch: the ticket records no vocabulary ({theirs}); this task's embedding "
                        f"rows are the tokens of {vocab.describe()} built from {source}")
    raise TaskError(
        f"vocabulary mismatch: the ticket expects the vocabulary it was found with ({theirs}), but this task "
        f"built another one ({vocab.describe()}) from {source}: the corpus or task.min_freq / max_vocab / "
        "train_tokens / train_examples differ from the ticket's. Set task.vocab_from to the ticket's folder (or "
        "its find job's) to build the task on the ticket's own vocabulary"
    )


@dataclass(frozen=True, kw_only=True)
class LMData:
    """A language-modelling corpus as id streams (int64, 1-d) and the vocabulary that encoded them."""

    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str

    def to(self, device: torch.device) -> LMData:
        """The streams on `device`: one copy each."""
        return replace(self, train=self.train.to(device), valid=self.valid.to(device), test=self.test.to(device))


def on_device(task: LanguageModelTask | ClassifyTask, device: torch.device | str) -> Any:
    """`task.data()` on `device`: the CPU's own object there, else a copy made once per task and device."""
    device = canonical(device)
    if device.type == "cpu":
        return task.data()
    if device not in task._on_device:
        task._on_device[device] = task.data().to(device)
    return task._on_device[device]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class LanguageModelTask:
    """word_lm / char_lm: an LSTM language model on a corpus, scored by perplexity (lower is better)."""

    metrics = LM_METRICS

    def __init__(self, name: str, options: LMOptions, *, data_root: Path) -> None:
        if name not in ("word_lm", "char_lm"):
            raise TaskError(f"LanguageModelTask serves word_lm and char_lm, got {name!r}")
        self.name, self.options, self.data_root = name, options.checked_for(name), data_root
        self.kind = "word" if name == "word_lm" else "char"
        self._data: LMData | None = None  # loaded on first use, once per task object
        self._on_device: dict[torch.device, LMData] = {}  # copies on training devices, made once each

    def spec(self) -> dict[str, Any]:
        """Plugin, task, options, and the vocabulary (saved with every ticket)."""
        return {"plugin": "nlp", "task": self.name, "options": self.options.as_dict(), **self.data().vocab.as_spec()}

    def prepare(self) -> None:
        """Read the corpus and build the vocabulary now, so a missing file fails before any run exists."""
        self.data()

    def check_plan(self, plan: Plan) -> None:
        """Refuse, before any run is recorded, a train.batch_size too large for one training window: the
        stream is cut into train.batch_size columns, each of which must hold task.bptt + 1 tokens (see
        `batching`). Loads the data."""
        n, bptt = self.data().train.shape[0], self.options.bptt
        if steps_per_epoch(n, plan.batch_size, bptt) >= 1:
            return
        cap = f" (task.train_tokens = {self.options.train_tokens})" if self.options.train_tokens else ""
        most = n // (bptt + 1)
        if most < 1:
            raise TaskError(f"the {n}-token training split{cap} is too short for one window of task.bptt + 1 = "
                            f"{bptt + 1} tokens at any train.batch_size (got {plan.batch_size}): lower task.bptt")
        raise TaskError(f"train.batch_size must be at most {most} for the {n}-token training split{cap}: each of "
                        f"its train.batch_size columns needs task.bptt + 1 = {bptt + 1} tokens for one window, "
                        f"got {plan.batch_size}")

    def build_model(self, seed: int) -> nn.Module:
        """The LSTM language model over this task's vocabulary, initialised from `seed` alone."""
        o, vocab = self.options, self.data().vocab
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(seed)
            model = LSTMLanguageModel(len(vocab), o.emb_size, o.hidden_size, o.layers, o.dropout, o.tie_weights)
            init_lm(model)
        return model

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Every LSTM input and recurrent matrix, plus embedding and decoder unless prune_embeddings = false."""
        return lm_prunable(_as(model, LSTMLanguageModel), embeddings=self.options.prune_embeddings)

    def head(self, model: nn.Module) -> set[str]:
        """Embedding, decoder weight and bias: bound to the vocabulary, re-initialised on transfer (unless
        transfer_embeddings = true, which keeps them and needs the same vocabulary)."""
        if self.options.transfer_embeddings:
            return set()
        m = _as(model, LSTMLanguageModel)
        return {"encoder.weight", "decoder.bias"} | (set() if m.tied else {"decoder.weight"})

    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        """Truncated BPTT over the training stream with `ticketx.training.fit`, masks held, on `plan.device`
        (the stream is copied there once per task; windows and the carried state stay there)."""
        batches = StreamBatches(on_device(self, plan.device).train, plan.batch_size, self.options.bptt)
        # dropout draws from the global RNG (the device's, on CUDA): seed a fork of it from the plan
        with torch.random.fork_rng(devices=rng_devices(plan.device)):
            torch.manual_seed(plan.data_seed * 1_000_003 + plan.start_step)  # seeds CUDA's too
            # batches are StreamBatch tuples (inputs, targets, epoch, window); fit hands them to the loss only
            fit(model, masks, plan, observer, batch_at=batches, loss_fn=CarriedStateLoss(),  # type: ignore[arg-type]
                evaluate=self._evaluate_split)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Loss (nats per token) and perplexity on the validation and test streams."""
        return {**prefixed(self._evaluate_split(model, "val"), "val"),
                **prefixed(self._evaluate_split(model, "test"), "test")}

    def scoring_batches(self, n_per_class: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """SNIP's and GraSP's sample: a language model has no classes, so `LM_SCORING_WINDOWS * n_per_class`
        windows of task.bptt tokens (the count a 10-class classifier's sample has) at offsets of the training
        stream drawn by `seed`, as one batch of (T, B) inputs and next-token targets, on the CPU."""
        train, bptt = self.data().train, self.options.bptt
        n = LM_SCORING_WINDOWS * n_per_class
        if train.shape[0] < bptt + 2:
            raise TaskError(f"the training stream ({train.shape[0]} tokens) is shorter than one task.bptt window")
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, train.shape[0] - bptt - 1, (n,), generator=g)
        offsets = starts[None, :] + torch.arange(bptt)[:, None]  # (T, B)
        return [(train[offsets], train[offsets + 1])]

    def scoring_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy of one scoring batch, from a zero LSTM state."""
        logits, _ = model(batch[0])  # (T, B, V)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[1].reshape(-1))

    def scoring_input_shape(self) -> tuple[int, ...]:
        raise no_synflow(self.name)

    def check_source(self, meta: Mapping[str, Any]) -> None:
        """Before a transfer: a ticket whose embedding is kept must share this task's vocabulary."""
        check_vocab_source(meta, self.data().vocab, keeps_embeddings=self.options.transfer_embeddings)

    def check_ticket(self, meta: Mapping[str, Any]) -> None:
        """Before a ticket is loaded whole (embedding and decoder included) to be trained or evaluated on this
        task: it must have been found on this task's vocabulary (TaskError naming the one it expects)."""
        check_ticket_vocab(meta, self.data().vocab, self.data().source)

    def data(self) -> LMData:
        """Id streams and vocabulary, read on first use and kept for the task's lifetime."""
        if self._data is None:
            o = self.options
            path, shown = corpus_path(self.data_root, o.corpus)
            splits: TokenSplits = (load_word_corpus(path, shown=shown) if self.kind == "word"
                                   else load_char_corpus(path, shown=shown))
            train = splits.train[: o.train_tokens] if o.train_tokens else splits.train
            # the vocabulary comes from the tokens the model trains on, never from valid or test
            vocab = resolve_vocab(o.vocab_from, self.kind, train, min_freq=o.min_freq, max_vocab=o.max_vocab)
            valid, test = ((s[: o.eval_tokens] if o.eval_tokens else s) for s in (splits.valid, splits.test))
            for split, tokens in (("validation", valid), ("test", test)):
                if len(tokens) < 2 * o.eval_batch_size:  # each of the B columns needs 2 tokens
                    raise DataError(f"the {split} split of {splits.source} has {len(tokens)} tokens (task.eval_tokens "
                                    f"= {o.eval_tokens}): too few for task.eval_batch_size {o.eval_batch_size}, "
                                    f"which needs at least {2 * o.eval_batch_size}")
            self._data = LMData(vocab=vocab, train=vocab.encode(train), valid=vocab.encode(valid),
                                test=vocab.encode(test), source=splits.source)
        return self._data

    def _evaluate_split(self, model: nn.Module, split: str) -> dict[str, float]:
        d = on_device(self, model_device(model))
        ids = d.valid if split == "val" else d.test
        return evaluate_stream(_as(model, LSTMLanguageModel), ids, batch_size=self.options.eval_batch_size,
                               bptt=self.options.bptt)


@dataclass(frozen=True, kw_only=True)
class ClassifyData:
    """Sentences as padded ids (N, L) (PAD after each sentence), labels (N,), per split; the vocabulary."""

    vocab: Vocab
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    source: str

    def to(self, device: torch.device) -> ClassifyData:
        """The encoded splits on `device`: one copy each."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return replace(self, **moved)


def encode_sentences(vocab: Vocab, sentences: Sequence[Sequence[str]], max_len: int) -> torch.Tensor:
    """(N, L) ids, each sentence cut to `max_len` tokens and padded with PAD; L = the longest kept length."""
    width = min(max_len, max(len(s) for s in sentences))
    out = torch.full((len(sentences), width), PAD, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids = vocab.encode(s[:max_len])
        out[i, : ids.shape[0]] = ids
    return out


class ClassifyTask:
    """classify: an LSTM sentence classifier on label<TAB>text files, scored by accuracy."""

    metrics = MetricSpec()  # accuracy, higher is better; early stop on val_loss

    def __init__(self, name: str, options: ClassifyOptions, *, data_root: Path) -> None:
        self.name, self.options, self.data_root = name, options.checked_for(name), data_root
        self._data: ClassifyData | None = None
        self._on_device: dict[torch.device, ClassifyData] = {}  # copies on training devices, made once each

    def spec(self) -> dict[str, Any]:
        """Plugin, task, options, and the vocabulary (saved with every ticket)."""
        return {"plugin": "nlp", "task": self.name, "options": self.options.as_dict(), **self.data().vocab.as_spec()}

    def prepare(self) -> None:
        """Read the dataset and build the vocabulary now."""
        self.data()

    def check_plan(self, plan: Plan) -> None:
        """Refuse, before any run is recorded, a train.batch_size larger than the training split: one batch
        would not fill. Loads the data."""
        n = self.data().train_x.shape[0]
        if plan.batch_size > n:
            cap = f" (task.train_examples = {self.options.train_examples})" if self.options.train_examples else ""
            raise TaskError(f"train.batch_size must be at most the {n} sentences of the training split{cap}, "
                            f"got {plan.batch_size}")

    def build_model(self, seed: int) -> nn.Module:
        """The LSTM classifier over this task's vocabulary and classes, initialised from `seed` alone."""
        o, d = self.options, self.data()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LSTMClassifier(len(d.vocab), d.classes, o.emb_size, o.hidden_size, o.layers, o.dropout)
            init_classifier(model)
        return model

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """LSTM matrices and the output layer's weight, plus the embedding unless prune_embeddings = false."""
        return classifier_prunable(_as(model, LSTMClassifier), embeddings=self.options.prune_embeddings)

    def head(self, model: nn.Module) -> set[str]:
        """The output layer (classes) and the embedding (vocabulary; kept with transfer_embeddings = true)."""
        out = {"classifier.weight", "classifier.bias"}
        return out if self.options.transfer_embeddings else out | {"encoder.weight"}

    def train(self, model: nn.Module, masks: Masks, plan: Plan, observer: Observer) -> None:
        """Minibatches of sentences by a seeded permutation per epoch, with `ticketx.training.fit`, gathered
        on `plan.device` (the encoded splits are copied there once per task)."""
        d = on_device(self, plan.device)
        batches = EpochBatches(d.train_x, d.train_y, plan.batch_size, plan.data_seed)
        with torch.random.fork_rng(devices=rng_devices(plan.device)):
            torch.manual_seed(plan.data_seed * 1_000_003 + plan.start_step)
            fit(model, masks, plan, observer, batch_at=batches, loss_fn=cross_entropy_loss,
                evaluate=self._evaluate_split)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Loss and accuracy on the dev ("val") and test splits."""
        return {**prefixed(self._evaluate_split(model, "val"), "val"),
                **prefixed(self._evaluate_split(model, "test"), "test")}

    def scoring_batches(self, n_per_class: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n_per_class` training sentences of each class (never dev or test), chosen by `seed`, as padded
        ids and labels on the CPU: what SNIP and GraSP score with."""
        d = self.data()
        return balanced_sample(d.train_x, d.train_y, n_per_class, seed)

    def scoring_input_shape(self) -> tuple[int, ...]:
        raise no_synflow(self.name)

    def check_source(self, meta: Mapping[str, Any]) -> None:
        """Before a transfer: a ticket whose embedding is kept must share this task's vocabulary."""
        check_vocab_source(meta, self.data().vocab, keeps_embeddings=self.options.transfer_embeddings)

    def check_ticket(self, meta: Mapping[str, Any]) -> None:
        """Before a ticket is loaded whole (embedding included): it must have been found on this vocabulary."""
        check_ticket_vocab(meta, self.data().vocab, self.data().source)

    def data(self) -> ClassifyData:
        """Encoded splits and vocabulary, read on first use and kept for the task's lifetime."""
        if self._data is None:
            self._data = self._load()
        return self._data

    def _load(self) -> ClassifyData:
        o = self.options
        if o.dataset in ("sst5", "sst2"):
            splits: LabelledSplits = load_sst(self.data_root, binary=o.dataset == "sst2")
        elif o.dataset == "mr":
            splits = load_mr(self.data_root, split_seed=o.split_seed)
        else:
            path, shown = corpus_path(self.data_root, o.corpus)
            splits = load_tsv_folder(path, shown=shown)
        train = splits.train
        n = o.train_examples or len(train.labels)
        sentences, labels = train.sentences[:n], train.labels[:n]
        tokens = [t for s in sentences for t in s[: o.max_len]]  # the training tokens the model reads
        vocab = resolve_vocab(o.vocab_from, "word", tokens, min_freq=o.min_freq, max_vocab=o.max_vocab)

        def enc(ss: Sequence[Sequence[str]], ys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return encode_sentences(vocab, ss, o.max_len), torch.tensor(list(ys), dtype=torch.long)

        train_x, train_y = enc(sentences, labels)
        val_x, val_y = enc(splits.dev.sentences, splits.dev.labels)
        test_x, test_y = enc(splits.test.sentences, splits.test.labels)
        return ClassifyData(vocab=vocab, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y,
                            test_x=test_x, test_y=test_y, classes=splits.classes, source=splits.source)

    def _evaluate_split(self, model: nn.Module, split: str) -> dict[str, float]:
        d = on_device(self, model_device(model))
        x, y = (d.val_x, d.val_y) if split == "val" else (d.test_x, d.test_y)
        return evaluate_classifier(model, x, y, batch_size=500)


def _as(model: nn.Module, cls: type) -> Any:
    if not isinstance(model, cls):
        raise TaskError(f"expected a {cls.__name__} built by the nlp plugin, got {type(model).__name__}")
    return model
