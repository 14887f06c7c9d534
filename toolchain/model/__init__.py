"""The Drop-and-Restore PyTorch model and its per-family adapters; imports core."""
