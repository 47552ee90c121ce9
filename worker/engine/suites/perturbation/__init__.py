"""Suite ``perturbation`` (SUITES.md 3): generator layers (3a), corruptions (3b), geometric (3c)."""
