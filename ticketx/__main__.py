"""`python -m ticketx` runs the CLI."""

from .cli import main

main()
