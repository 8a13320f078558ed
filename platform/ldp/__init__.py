"""LDP, the LoRA-Diffusion Platform.

Subpackages (one concept each; see docs/ARCHITECTURE.md):

- ``ldp.diffusion``  the masked-diffusion process: schedules, corruption, loss, sampler, ELBO
- ``ldp.models``     base denoisers (native transformer, warm-started HF encoders), sizes
- ``ldp.methods``    adaptation methods (lora-diffusion and the baselines) behind one interface
- ``ldp.data``       the 15 tasks: specs, loading, collation, metrics; text corpora
- ``ldp.training``   typed configs and the single-process trainer (Ray workers call the same code)
- ``ldp.evaluation`` task evaluation by generation or verbaliser likelihood
- ``ldp.cli``        the ``ldp`` command line
- ``ldp.store``      the adapter registry over fsspec        (folder ``adapters_store/``)
- ``ldp.jobs``       submit, sweep, train-all                (folder ``jobs/``)
- ``ldp.cluster``    reaching Ray, strategy choice, memory   (folder ``cluster/``)

Importing ``ldp`` does no work: no torch flags, no network, no Ray.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
