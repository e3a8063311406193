"""`python -m service`: the same as `sdcore serve`."""

import sys

from service.server import main

if __name__ == "__main__":
    sys.exit(main())
