"""Bad input through the command line: a clear message naming the file (or vocabulary), exit status 1, no
traceback, before anything trains."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ticketx import masks as M
from ticketx import ticket as T
from ticketx.cli import main
from ticketx_nlp.plugin import NLPPlugin

OTHER_WORDS = ("a", "bird", "flew", "over", "the", "river", "and", "sang", "song", "tree")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("TICKETX_DATA", str(tmp_path))
    return tmp_path


def recipe(path: Path, task: str, *, transfer: bool = False) -> Path:
    text = (f'name = "nlp-cli"\n[task]\nplugin = "nlp"\n{task}\n'
            '[train]\nsteps = 4\nbatch_size = 2\nlr = 0.01\neval_every = 2\n')
    path.write_text(text + ('[transfer]\nhead = "dense"\n' if transfer else '[prune]\nlevels = 1\nrewind_step = 1\n'))
    return path


def failed(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 1 and "Traceback" not in r.output and r.exception is not None, r.output
    return r.output


LM = 'name = "word_lm"\ncorpus = "c"\nemb_size = 4\nhidden_size = 4\nbptt = 3\neval_batch_size = 2'


def test_find_on_a_file_that_is_not_utf8(cli_env: Path, make_corpus):
    folder = make_corpus(cli_env / "c")
    (folder / "train.txt").write_bytes(b"the cat sat\nna\xefve dog\n")
    out = failed("find", str(recipe(cli_env / "r.toml", LM)))
    assert f"{folder}/train.txt is not UTF-8 text: byte 0xef at byte offset 14" in " ".join(out.split())


def test_find_on_an_empty_or_unreadable_file(cli_env: Path, make_corpus, monkeypatch: pytest.MonkeyPatch):
    folder = make_corpus(cli_env / "c", valid="\n \n")
    assert f"{folder}/valid.txt is empty" in " ".join(failed("find", str(recipe(cli_env / "r.toml", LM))).split())
    make_corpus(cli_env / "c")
    read_bytes = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.name == "test.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)  # running as root, chmod 000 would not stop the read
    out = " ".join(failed("find", str(recipe(cli_env / "r.toml", LM))).split())
    assert f"{folder}/test.txt cannot be read: Permission denied" in out


def test_find_on_labels_that_are_not_integers(cli_env: Path):
    (cli_env / "d").mkdir()
    for split in ("train", "dev", "test"):
        (cli_env / "d" / f"{split}.tsv").write_text("0\tdull film\npos\tgreat film\n")
    out = failed("find", str(recipe(cli_env / "r.toml", 'name = "classify"\ndataset = "tsv"\ncorpus = "d"')))
    assert f"{cli_env}/d/train.tsv, line 2: label 'pos' is not an integer" in " ".join(out.split())


def test_transfer_keeping_embeddings_on_another_vocabulary(cli_env: Path, make_corpus):
    make_corpus(cli_env / "c")
    make_corpus(cli_env / "o", seed=5, words=OTHER_WORDS)
    source = NLPPlugin().make_task("word_lm", {"corpus": "c", "emb_size": 4, "hidden_size": 4}, data_root=cli_env)
    model = source.build_model(0)
    masks = M.random_like(M.ones({n: p.detach() for n, p in source.prunable(model).items()}),
                          torch.Generator().manual_seed(0))
    ticket = T.save(T.make(masks, model.state_dict(), task=source.spec(), seed=0, level=1), cli_env / "ticket")
    to = recipe(cli_env / "t.toml", LM.replace('"c"', '"o"') + "\ntransfer_embeddings = true", transfer=True)
    out = " ".join(failed("transfer", str(ticket), "--to", str(to), "--workers", "1").split())
    vocab = source.data().vocab
    assert f"the ticket's vocabulary ({len(vocab)} word tokens, sha256 {vocab.sha256[:12]}) differs" in out
    assert "set task.vocab_from to the ticket's folder" in out


def test_loading_a_ticket_whole_on_an_edited_corpus(cli_env: Path, make_corpus):
    """show, export and transfer --compare load a ticket whole: the core calls the task's check_ticket hook, so
    a corpus whose vocabulary changed but kept its size (shapes alike) is refused with the vocabulary named."""
    make_corpus(cli_env / "c", words=OTHER_WORDS)
    task = NLPPlugin().make_task("word_lm", {"corpus": "c", "emb_size": 4, "hidden_size": 4}, data_root=cli_env)
    model = task.build_model(0)
    masks = M.ones({n: p.detach() for n, p in task.prunable(model).items()})
    ticket = T.save(T.make(masks, model.state_dict(), task=task.spec(), seed=0, level=0), cli_env / "ticket")
    r = CliRunner().invoke(main, ["show", str(ticket)])
    assert r.exit_code == 0 and "yes: every tensor matches nlp/word_lm" in r.output, r.output
    make_corpus(cli_env / "c", words=tuple(f"x{w}" for w in OTHER_WORDS))  # the same text, words renamed
    vocab = task.data().vocab
    expected = f"vocabulary mismatch: the ticket expects the vocabulary it was found with ({len(vocab)} word tokens"
    assert expected in " ".join(failed("show", str(ticket)).split())
    assert expected in " ".join(failed("export", str(ticket), "--out", str(cli_env / "x.pt")).split())
