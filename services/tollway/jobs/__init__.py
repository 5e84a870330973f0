"""The jobs service: background generations and batches that survive disconnects and restarts."""
