"""Job recipes (torchtune-style): each builds its parts from a typed config and runs the trainer.

- :mod:`~ldp.training.recipes.pretrain`: a base denoiser on a text corpus.
- :mod:`~ldp.training.recipes.adapter`: one task adapter (any ``--method``) on a frozen base.
"""
