"""``python -m adheat_app.simulate``: the ``adheat-simulate`` command."""

import sys

from adheat_app.simulate.cli import main

sys.exit(main())
