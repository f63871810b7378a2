"""The KServe v2 / Triton protocol (``inference.GRPCInferenceService``): a second thin protocol over the same
task adapters as ``seqserve.v1`` (``service.py``; ``docs/triton.md``)."""
