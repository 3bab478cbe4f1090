"""A soak: N concurrent clients against a real ``fileshare serve`` for a set time, with mixed
sizes, EICAR, duplicates, aborted and deleted uploads; then every acknowledged file is
downloaded and checked, and every store, the index, the budget, RSS and the log are checked
for leftovers. See ``bench/README.md`` ("The soak")::

    .venv/bin/python -m bench.soak [--clients 50] [--duration 600] [--backend s3|gcs|local]
"""
