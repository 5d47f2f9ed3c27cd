"""`python -m orch.cli`: the `orch` console script without its wrapper."""

from orch.cli import main

main()
