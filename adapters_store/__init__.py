"""The adapter registry over fsspec. Imported as ``ldp.store``."""
