"""Entry point: ``python -m bench run --system patroni --profile aggressive --scenario all``."""

import sys

from bench.cli import main

sys.exit(main())
