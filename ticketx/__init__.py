"""ticketx: find lottery tickets and transfer them, every run recorded in MLflow."""

__version__ = "0.1.0"
