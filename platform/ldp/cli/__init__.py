"""The ``ldp`` command line (typer). One module per command group, each with ``register(app)``."""
