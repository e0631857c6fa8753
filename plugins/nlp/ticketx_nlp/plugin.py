"""The `nlp` entry point: LSTM language models and LSTM text classifiers for ticketx.

Light on purpose: listing the tasks and refusing a bad option import neither the task nor the model and
data modules; `make_task` imports the task module once the options are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketx.paths import default_data_root
from ticketx.task import TaskError

from .options import ClassifyOptions, LMOptions, suggest

if TYPE_CHECKING:
    from .task import ClassifyTask, LanguageModelTask

TASKS = {
    "word_lm": "word-level LSTM language model on a folder of train.txt, valid.txt, test.txt (task.corpus); perplexity",
    "char_lm": "character-level LSTM language model on one text file split 90/5/5 (task.corpus); perplexity",
    "classify": "LSTM sentence classifier on label<TAB>text files: sst5, sst2, mr or a tsv folder; accuracy",
}


class NLPPlugin:
    """Builds NLP tasks: LSTM language models (Yu et al. 2019 sec. 3.2) and LSTM classifiers."""

    def tasks(self) -> dict[str, str]:
        """Task name -> one-line description."""
        return dict(TASKS)

    def make_task(self, name: str, options: Mapping[str, Any], *,
                  data_root: Path | None) -> LanguageModelTask | ClassifyTask:
        """The named task with its options checked; `data_root` None means ~/.cache/ticketx/data."""
        if name not in TASKS:
            raise TaskError(f"task.name must be one of the nlp tasks {', '.join(TASKS)}, got {name!r}"
                            + suggest(name, TASKS))
        root = default_data_root() if data_root is None else Path(data_root)
        if name == "classify":
            classify = ClassifyOptions.from_mapping(options, task=name)
            from .task import ClassifyTask  # the task, model and data modules: only once the options are good

            return ClassifyTask(name, classify, data_root=root)
        lm = LMOptions.from_mapping(options, task=name)
        from .task import LanguageModelTask

        return LanguageModelTask(name, lm, data_root=root)
