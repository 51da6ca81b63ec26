"""``python -m phyllod.ctl``: the same as the ``phyllodctl`` command."""

import sys

from phyllod.ctl.main import main

sys.exit(main())
