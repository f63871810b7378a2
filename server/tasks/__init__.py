"""Task adapters: per model version, built once at load, they own tokenization, decoding, beam search
and forecast rollout. Servicers of any protocol validate a request, call an adapter and build the reply.

``workers`` are the adapter's generation loops (``server/generation.py``), started and stopped
with the model.
"""

from __future__ import annotations

from server.tasks.forecast import ForecastTask
from server.tasks.sentiment import SentimentTask
from server.tasks.translation import TranslationTask

Task = SentimentTask | ForecastTask | TranslationTask
TASKS: dict[str, type[Task]] = {"sentiment": SentimentTask, "forecast": ForecastTask, "translation": TranslationTask}
