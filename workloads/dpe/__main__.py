"""`python -m dpe` is the same as the `dpe` console script."""

from dpe.cli import main

main()
