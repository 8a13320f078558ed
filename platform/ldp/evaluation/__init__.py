"""Task evaluation by generation or verbaliser likelihood (``ldp eval``)."""

from ldp.evaluation.evaluate import EvalResult, decode_response, evaluate_task

__all__ = ["EvalResult", "decode_response", "evaluate_task"]
