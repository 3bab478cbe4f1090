"""Benchmarks of fileshare against its no-overhead limits (see ``bench/README.md``).

Run with ``.venv/bin/python -m bench`` (or ``python bench/run.py``); ``--quick`` for a
short run.
"""
