"""The lowest layer: errors, atomic writes, length configurations and small shared helpers; imports nothing else from toolchain."""
