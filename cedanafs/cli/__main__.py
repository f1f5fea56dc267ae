"""`python -m cedanafs.cli`."""

from . import main

main()
