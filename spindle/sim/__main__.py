"""``python -m spindle.sim``: see ``spindle.sim.runner.main``."""

import sys

from spindle.sim.runner import main

sys.exit(main())
