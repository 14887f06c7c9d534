"""`python -m toolchain.cli` (torchrun launches training this way)."""

from .commands import main

main()
