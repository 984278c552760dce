"""The benchmark's steps, one module each; ``benchmarks/run.py`` runs them in order."""
