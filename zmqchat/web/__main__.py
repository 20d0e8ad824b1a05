"""``python -m zmqchat.web``: the gateway's command line (``zmqchat.web.cli``)."""

import sys

from .cli import main

sys.exit(main())
