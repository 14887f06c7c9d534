"""Verification, timing and the peers qtool is measured against (verify, standard, bench, menu, latency model)."""
