"""Helpers that start and drive real external programs for the integration tests."""
