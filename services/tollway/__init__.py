"""Tollway: an LLM gateway built as a mesh of gRPC services."""
