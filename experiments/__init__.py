"""The lab behind docs/experiments.md: `python -m experiments --help` (see run.py)."""
