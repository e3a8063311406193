"""`python -m sdcore.service`: the same as `sdcore serve`."""

import sys

from sdcore.service.server import main

if __name__ == "__main__":
    sys.exit(main())
