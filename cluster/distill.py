"""`python -m cluster.distill ...`: the same as `studyhall distill ...`, for `ray job submit`."""
import sys

from cluster.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
