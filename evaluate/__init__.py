"""The reference runtime: the shipped ONNX graphs run with ONNX Runtime and numpy only (no torch).

Written once on ``contract/`` and used by the check of the shipped models (``python -m evaluate``),
the bench's in-process baseline (a) and the tests, as the reference the server must equal:

- sentiment: ``sentiment_probs`` (the ``sequence`` graph), ``sentiment_steps``/``sentiment_running`` (the stream graph);
- forecast: ``forecast_quantiles`` (the rollout that feeds the median back);
- translation: ``translation_sources``, ``greedy_steps``/``translation_greedy`` (batched greedy decoding,
  state on the session's device) and ``translation_beam`` (numpy beam search).
"""

from evaluate.forecast import forecast_quantiles
from evaluate.sentiment import sentiment_ids, sentiment_probs, sentiment_running, sentiment_steps
from evaluate.translation import Step, greedy_steps, translation_beam, translation_greedy, translation_sources

__all__ = [
    "Step",
    "forecast_quantiles",
    "greedy_steps",
    "sentiment_ids",
    "sentiment_probs",
    "sentiment_running",
    "sentiment_steps",
    "translation_beam",
    "translation_greedy",
    "translation_sources",
]
