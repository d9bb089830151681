"""Test support shared across test folders: tiny models, datasets, servers and chart helpers.

An importable package (pytest puts ``tests/`` on ``sys.path`` through ``pythonpath`` in
pyproject.toml), so no test reaches a helper through ``sys.path`` edits or another folder's
``conftest``.
"""
