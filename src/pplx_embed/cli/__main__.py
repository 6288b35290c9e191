"""``python -m pplx_embed.cli``: the ``pplx-embed`` console script."""

import sys

from pplx_embed.cli import main

sys.exit(main())
