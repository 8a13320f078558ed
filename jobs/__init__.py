"""The jobs layer: submit, sweep, train-all (+ router), job specs. Imported as ``ldp.jobs``."""
