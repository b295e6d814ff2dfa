"""`python -m experiments`: see experiments/run.py."""

from experiments.run import main

raise SystemExit(main())
