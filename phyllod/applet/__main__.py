"""``python -m phyllod.applet``: the same as the ``phyllod-applet`` command."""

from phyllod.applet.app import main

raise SystemExit(main())
