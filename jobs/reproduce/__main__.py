"""``python -m jobs.reproduce`` (also as a ``ray job submit`` entrypoint): the reproduction job."""

import sys

from jobs.common import exit_with
from jobs.reproduce.engine import main

if __name__ == "__main__":
    sys.argv[0] = "python -m jobs.reproduce"   # argparse's usage line would otherwise say "__main__.py"
    exit_with(main)
