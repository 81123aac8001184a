"""``python -m vaelab.reproduce``: the same as ``vaelab-reproduce``."""

from vaelab.reproduce.cli import main

main()
