import sys

from pgquorum.ctl.main import main

sys.exit(main())
