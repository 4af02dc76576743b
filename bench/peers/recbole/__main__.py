"""``python -m bench.peers.recbole``: see :mod:`bench.peers.recbole.run`."""

import sys

from bench.peers.recbole.run import main

sys.exit(main())
