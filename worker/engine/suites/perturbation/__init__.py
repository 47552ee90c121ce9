"""Suite ``perturbation`` (docs/suites/perturbation.md): generator layers (3a), corruptions (3b), geometric (3c)."""
