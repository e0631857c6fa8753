"""Every data and option error names the file or field, what it got and what is expected."""

from dataclasses import replace
from pathlib import Path

import pytest

from ticketx.task import DataError, Plan, TaskError
from ticketx_nlp.plugin import NLPPlugin


def make(name: str, options: dict, root: Path):
    task = NLPPlugin().make_task(name, options, data_root=root)
    task.prepare()
    return task


# data


def test_missing_corpus_folder_names_the_path_and_the_layout(tmp_path: Path):
    with pytest.raises(DataError, match=rf"word_lm corpus folder {tmp_path}/text/wt2 not found \(task.corpus = "
                                        rf"'text/wt2' under the data root {tmp_path}\); expected a folder holding "
                                        r"train.txt, valid.txt, test.txt or wiki.train.tokens"):
        make("word_lm", {"corpus": "text/wt2"}, tmp_path)


def test_folder_without_the_layout_lists_what_it_holds(tmp_path: Path, make_corpus):
    folder = make_corpus(tmp_path / "c")
    (folder / "valid.txt").unlink()
    with pytest.raises(DataError, match=r"does not hold a word_lm corpus: expected train.txt, valid.txt, test.txt "
                                        r".*; it holds \['test.txt', 'train.txt'\]"):
        make("word_lm", {"corpus": "c"}, tmp_path)


def test_wikitext_file_names_are_read_too(tmp_path: Path, make_sentences):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        (folder / f"wiki.{split}.tokens").write_text(make_sentences(10, seed))
    assert make("word_lm", {"corpus": "wikitext-2"}, tmp_path).data().train.shape[0] > 30


def test_empty_file_is_named(tmp_path: Path, make_corpus):
    make_corpus(tmp_path / "c", test=" \n\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/c/test.txt is empty"):
        make("word_lm", {"corpus": "c"}, tmp_path)


def test_non_utf8_file_names_the_byte_offset(tmp_path: Path, make_corpus):
    folder = make_corpus(tmp_path / "c")
    (folder / "valid.txt").write_bytes("caf".encode() + b"\xe9 au lait\n")  # latin-1 é
    with pytest.raises(DataError, match=rf"{folder}/valid.txt is not UTF-8 text: byte 0xe9 at byte offset 3"):
        make("word_lm", {"corpus": "c"}, tmp_path)


def test_evaluation_splits_too_short_for_the_eval_batch(tmp_path: Path, make_corpus):
    make_corpus(tmp_path / "c", valid="a b c\n")
    with pytest.raises(DataError, match=r"the validation split of .*/c has 4 tokens \(task.eval_tokens = 0\): too "
                                        r"few for task.eval_batch_size 10, which needs at least 20"):
        make("word_lm", {"corpus": "c"}, tmp_path)
    make_corpus(tmp_path / "d", test="x y\n")
    with pytest.raises(DataError, match=r"the test split of .*/d has 3 tokens \(task.eval_tokens = 0\): too few "
                                        r"for task.eval_batch_size 2, which needs at least 4"):
        make("word_lm", {"corpus": "d", "eval_batch_size": 2}, tmp_path)
    with pytest.raises(DataError, match=r"the validation split .* has 5 tokens \(task.eval_tokens = 5\)"):
        make("word_lm", {"corpus": "d", "eval_tokens": 5}, tmp_path)


def test_char_corpus_errors(tmp_path: Path):
    with pytest.raises(DataError, match=rf"char_lm corpus file {tmp_path}/shakespeare.txt not found .*expected "
                                        r"one UTF-8 text file, split 90/5/5"):
        make("char_lm", {"corpus": "shakespeare.txt"}, tmp_path)
    with pytest.raises(DataError, match=r"is a folder; expected one text file"):
        make("char_lm", {"corpus": "."}, tmp_path)
    (tmp_path / "short.txt").write_text("abcdefghij")
    with pytest.raises(DataError, match=r"short.txt holds 10 characters: too few to split 90/5/5"):
        make("char_lm", {"corpus": "short.txt"}, tmp_path)


def test_word_corpus_in_one_file_is_split_by_lines(tmp_path: Path, make_sentences):
    text = make_sentences(100, 3)
    (tmp_path / "play.txt").write_text(text)
    task = make("word_lm", {"corpus": "play.txt", "eval_batch_size": 2}, tmp_path)
    lines = text.splitlines()
    words = [len(line.split()) + 1 for line in lines]  # each line's tokens and its <eos>
    d = task.data()
    assert [d.train.shape[0], d.valid.shape[0], d.test.shape[0]] == [sum(words[:90]), sum(words[90:95]),
                                                                       sum(words[95:])]
    vocab = task.data().vocab
    assert [vocab.tokens[i] for i in d.valid[: words[90]].tolist()] == [*lines[90].split(), "<eos>"]
    (tmp_path / "short.txt").write_text("a b\nc d\ne f\n")
    with pytest.raises(DataError, match=r"short.txt \(task.corpus = 'short.txt' under the data root .*\) holds 3 "
                                        r"lines: too few to split 90/5/5 by lines"):
        make("word_lm", {"corpus": "short.txt"}, tmp_path)


def write_tsv(folder: Path, train: str, dev: str = "0\tok fine\n1\tgood\n", test: str = "1\tgreat\n0\tmeh\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.tsv", train), ("dev.tsv", dev), ("test.tsv", test)):
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_tsv_label_that_is_not_an_integer(tmp_path: Path):
    write_tsv(tmp_path / "d", "0\tfine\n\npositive\tgreat film\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/d/train.tsv, line 3: label 'positive' is not an integer"):
        make("classify", {"dataset": "tsv", "corpus": "d"}, tmp_path)


def test_tsv_labels_out_of_range(tmp_path: Path):
    write_tsv(tmp_path / "d", "0\tfine\n1\tgreat\n", dev="0\tok\n2\tbad label\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 2: label 2 is out of range; allowed: 0..1"):
        make("classify", {"dataset": "tsv", "corpus": "d"}, tmp_path)
    write_tsv(tmp_path / "n", "0\tfine\n-1\tgreat\n")
    with pytest.raises(DataError, match=r"train.tsv, line 2: label -1 is out of range; allowed: 0 or more"):
        make("classify", {"dataset": "tsv", "corpus": "n"}, tmp_path)
    sst = write_tsv(tmp_path / "text" / "sst", "4\tfine\n5\tgreat\n")
    with pytest.raises(DataError, match=rf"{sst}/train.tsv, line 2: label 5 is out of range; allowed: 0..4"):
        make("classify", {"dataset": "sst5"}, tmp_path)


def test_tsv_lines_without_tab_or_text_and_single_class(tmp_path: Path):
    write_tsv(tmp_path / "a", "0\tfine\n1 great\n")
    with pytest.raises(DataError, match=r"train.tsv, line 2: no tab; expected label<TAB>text, got '1 great'"):
        make("classify", {"dataset": "tsv", "corpus": "a"}, tmp_path)
    write_tsv(tmp_path / "b", "0\tfine\n1\t  \n")
    with pytest.raises(DataError, match=r"train.tsv, line 2: label 1 has no text"):
        make("classify", {"dataset": "tsv", "corpus": "b"}, tmp_path)
    write_tsv(tmp_path / "c", "0\tfine\n0\tgreat\n")
    with pytest.raises(DataError, match=r"has only label 0: a classifier needs at least two classes"):
        make("classify", {"dataset": "tsv", "corpus": "c"}, tmp_path)


def test_tsv_training_file_with_one_class_whichever_it_is(tmp_path: Path):
    for label in (1, 3):  # all 1 used to read as 2 classes, all 3 as 4
        write_tsv(tmp_path / f"only{label}", f"{label}\tfine\n{label}\tgreat\n")
        with pytest.raises(DataError, match=rf"only{label}/train.tsv has only label {label}: a classifier needs at "
                                            r"least two classes"):
            make("classify", {"dataset": "tsv", "corpus": f"only{label}"}, tmp_path)


def test_tsv_training_labels_that_skip_a_number(tmp_path: Path):
    """classes are the training labels 0..K-1, each present: a skipped label is named (it used to be a class
    the model had an output for and never saw)."""
    write_tsv(tmp_path / "gap", "0\tfine\n2\tgreat\n0\tok\n")
    with pytest.raises(DataError, match=r"gap/train.tsv has labels 0, 2 but no 1: labels must be 0..K-1 with every "
                                        r"one of them in the training file; renumber them 0..1"):
        make("classify", {"dataset": "tsv", "corpus": "gap"}, tmp_path)
    write_tsv(tmp_path / "no0", "1\tfine\n2\tgreat\n")
    with pytest.raises(DataError, match=r"no0/train.tsv has labels 1, 2 but no 0:"):
        make("classify", {"dataset": "tsv", "corpus": "no0"}, tmp_path)
    write_tsv(tmp_path / "three", "2\tfine\n0\tgreat\n1\tok\n", dev="0\tok\n", test="2\tbad\n")
    assert make("classify", {"dataset": "tsv", "corpus": "three"}, tmp_path).data().classes == 3


def test_missing_classification_files(tmp_path: Path):
    with pytest.raises(DataError, match=rf"sst5/sst2 data: {tmp_path}/text/sst lacks train.tsv, dev.tsv, test.tsv"):
        make("classify", {"dataset": "sst2"}, tmp_path)
    with pytest.raises(DataError, match=rf"MR file {tmp_path}/text/mr/all.tsv not found"):
        make("classify", {"dataset": "mr"}, tmp_path)
    with pytest.raises(DataError, match=r"classify corpus folder .*/nope not found .*train.tsv, dev.tsv, test.tsv"):
        make("classify", {"dataset": "tsv", "corpus": "nope"}, tmp_path)
    write_tsv(tmp_path / "d", "0\tfine\n1\tgreat\n")
    (tmp_path / "d" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"classify tsv data: .*/d lacks dev.tsv"):
        make("classify", {"dataset": "tsv", "corpus": "d"}, tmp_path)


# options


@pytest.mark.parametrize("name, options, match", [
    ("word_lm", {"corpus": "c", "hiden_size": 4}, r"unknown option\(s\) for nlp task 'word_lm': task.hiden_size "
                                                   r"\(did you mean 'hidden_size'\?\). Valid options: corpus, "),
    ("word_lm", {}, r"task.corpus must name the word_lm corpus, a folder holding train.txt"),
    ("char_lm", {}, r"task.corpus must name the char_lm corpus, one text file"),
    ("word_lm", {"corpus": "c", "bptt": 0}, r"task.bptt must be at least 1, got 0"),
    ("word_lm", {"corpus": "c", "bptt": True}, r"task.bptt must be an integer, got True \(bool\)"),
    ("word_lm", {"corpus": "c", "dropout": 1.0}, r"task.dropout must be in \[0, 1\), got 1.0"),
    ("word_lm", {"corpus": "c", "max_vocab": 2}, r"task.max_vocab must be 0 \(no cap\) or at least 3"),
    ("word_lm", {"corpus": "c", "train_tokens": -1}, r"task.train_tokens must be 0 \(no cap\) or more, got -1"),
    ("word_lm", {"corpus": "c", "tie_weights": True, "emb_size": 4, "hidden_size": 8},
     r"task.tie_weights needs task.emb_size == task.hidden_size .* got emb_size 4 and hidden_size 8"),
    ("word_lm", {"corpus": "c", "prune_embeddings": "no"}, r"task.prune_embeddings must be true or false, got 'no'"),
    ("classify", {"dataset": "sst3"}, r"task.dataset must be one of sst5, sst2, mr, tsv, got 'sst3' \(did you mean"),
    ("classify", {"dataset": "tsv"}, r"task.corpus must name a folder holding train.tsv, dev.tsv and test.tsv"),
    ("classify", {"dataset": "mr", "corpus": "x"}, r"task.corpus applies only to task.dataset 'tsv', got 'x'"),
    ("classify", {"bptt": 35}, r"unknown option\(s\) for nlp task 'classify': task.bptt"),
    ("classify", {"max_len": 0}, r"task.max_len must be at least 1, got 0"),
    ("sentiment", {}, r"task.name must be one of the nlp tasks word_lm, char_lm, classify, got 'sentiment'"),
])
def test_option_errors(name, options, match, tmp_path: Path):
    with pytest.raises(TaskError, match=match):
        NLPPlugin().make_task(name, options, data_root=tmp_path)


def test_vocab_from_errors(tmp_path: Path, make_corpus):
    make_corpus(tmp_path / "c")
    with pytest.raises(TaskError, match=rf"task.vocab_from = '{tmp_path}/none' is not a ticket folder \(with "
                                        r"ticket.json\) nor a find job folder \(with job.json\)"):
        make("word_lm", {"corpus": "c", "vocab_from": str(tmp_path / "none")}, tmp_path)


# plans


def test_lm_batch_size_beyond_one_window_is_refused_before_training(tmp_path: Path, make_corpus, tiny):
    """A language model's batch is train.batch_size columns of task.bptt + 1 tokens: check_plan, which the
    core calls before any MLflow run opens, refuses a batch size the training stream cannot fill once."""
    make_corpus(tmp_path / "c")
    task = make("word_lm", {"corpus": "c", **tiny}, tmp_path)  # bptt 5: windows of 6 tokens a column
    n = task.data().train.shape[0]
    most = n // 6
    plan = Plan(steps=1, batch_size=most, optimizer="adam", lr=1e-3)
    task.check_plan(plan)
    with pytest.raises(TaskError, match=rf"^train.batch_size must be at most {most} for the {n}-token training split: "
                                        rf"each of its train.batch_size columns needs task.bptt \+ 1 = 6 tokens for "
                                        rf"one window, got {most + 1}$"):
        task.check_plan(replace(plan, batch_size=most + 1))
    capped = make("word_lm", {"corpus": "c", "train_tokens": 60, **tiny}, tmp_path)
    with pytest.raises(TaskError, match=r"at most 10 for the 60-token training split \(task.train_tokens = 60\): "):
        capped.check_plan(plan)
    short = make("word_lm", {"corpus": "c", "train_tokens": 5, **tiny}, tmp_path)
    with pytest.raises(TaskError, match=r"the 5-token training split \(task.train_tokens = 5\) is too short for "
                                        r"one window of task.bptt \+ 1 = 6 tokens at any train.batch_size"):
        short.check_plan(replace(plan, batch_size=1))


def test_classifier_batch_size_beyond_the_training_split_is_refused(tmp_path: Path):
    write_tsv(tmp_path / "d", "0\tfine\n1\tgreat\n0\tdull\n1\tgood\n")
    plan = Plan(steps=1, batch_size=4, optimizer="adam", lr=1e-3)
    task = make("classify", {"dataset": "tsv", "corpus": "d"}, tmp_path)
    task.check_plan(plan)
    with pytest.raises(TaskError, match=r"^train.batch_size must be at most the 4 sentences of the training split, "
                                        r"got 5$"):
        task.check_plan(replace(plan, batch_size=5))
    task = make("classify", {"dataset": "tsv", "corpus": "d", "train_examples": 3}, tmp_path)
    with pytest.raises(TaskError, match=r"at most the 3 sentences of the training split \(task.train_examples = 3\), "
                                        r"got 4"):
        task.check_plan(plan)
