import sys

from pgquorum.cli import main

sys.exit(main())
