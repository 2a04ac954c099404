"""``python -m jobs.pipeline`` (also as a ``ray job submit`` entrypoint): the main job."""

import sys

from jobs.common import exit_with
from jobs.pipeline.engine import main

if __name__ == "__main__":
    sys.argv[0] = "python -m jobs.pipeline"   # argparse's usage line would otherwise say "__main__.py"
    exit_with(main)
