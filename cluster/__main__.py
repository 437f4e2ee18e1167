"""`python -m cluster <command> ...`: the studyhall CLI (cluster/cli.py) where only the project's
folder is at hand, e.g. as a `ray job submit` entrypoint: `python -m cluster distill --preset smol ...`."""
import sys

from cluster.cli import main

sys.exit(main(sys.argv[1:]))
