"""`python -m encfs.cli`: the same as the `encfs` console script."""

from .main import main

main()
