"""ticketx-nlp: lottery tickets in LSTM language models and LSTM text classifiers (Yu et al. 2019)."""

__version__ = "0.1.0"
