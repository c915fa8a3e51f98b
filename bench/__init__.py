"""The encoding benchmark: ``python -m bench`` (see docs/performance.md)."""
