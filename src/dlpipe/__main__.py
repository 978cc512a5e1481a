"""`python -m dlpipe` (what `torchrun -m dlpipe` uses)."""

from dlpipe.cli import main

main()
