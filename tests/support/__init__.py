"""Helpers shared by tests and benches: private servers, in-process services, polling.

They live here, not in the `tollway` package: production code never imports tests (an
import-linter contract checks it).
"""
