"""Load benchmark of the streaming server against in-process baselines (``python -m bench``, see RESULTS.md)."""
