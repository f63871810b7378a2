"""Task adapters: per model version, built once at load, they own tokenization, decoding, beam search
and forecast rollout. Servicers of any protocol validate a request, call an adapter and build the reply.

``workers`` are the adapter's generation loops (``server/generation.py``), started and stopped
with the model. A manifest without a task (``None``) gets ``StatefulTask``: its step graph, served generically.
"""

from __future__ import annotations

from server.tasks.forecast import ForecastTask
from server.tasks.sentiment import SentimentTask
from server.tasks.stateful import StatefulTask
from server.tasks.translation import TranslationTask

Task = SentimentTask | ForecastTask | TranslationTask | StatefulTask
TASKS: dict[str | None, type[Task]] = {"sentiment": SentimentTask, "forecast": ForecastTask,
                                       "translation": TranslationTask, None: StatefulTask}
