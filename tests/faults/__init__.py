"""The fault-injection suite (`make faults`); see docs/RELIABILITY.md. A package, so its conftest never
shadows tests/conftest.py as the module `conftest`."""
