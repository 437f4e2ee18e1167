"""`python -m cluster.evaluate ...`: the same as `studyhall eval student ...`, for `ray job submit`."""
import sys

from cluster.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "student", *sys.argv[1:]]))
