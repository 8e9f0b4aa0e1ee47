"""Code shared by several test modules: test data, independent reference computations, fakes.

Test modules import from here (`from helpers.ticks import random_ticks`), never from each other;
`tests/` is on the import path through `pythonpath` in pyproject's `[tool.pytest.ini_options]`.
Shared fixtures live in `tests/conftest.py`.
"""
