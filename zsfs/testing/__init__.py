"""Helpers for tests and benchmarks: tiny models and synthetic stores (no downloads)."""
