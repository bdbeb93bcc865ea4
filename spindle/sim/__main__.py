"""``python -m spindle.sim``: see ``spindle.sim.runner.main``; ``python -m spindle.sim nodes
...`` simulates whole nodes instead (``spindle.sim.nodes.main``)."""

import sys

if sys.argv[1:2] == ["nodes"]:
    from spindle.sim.nodes import main as nodes_main

    sys.exit(nodes_main(sys.argv[2:]))

from spindle.sim.runner import main

sys.exit(main())
