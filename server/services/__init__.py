"""The gRPC servicers: validate a request, call the model's task adapter (``server/tasks/``), build the reply.
No decoding or rollout logic lives here. One module per ``seqserve.v1`` service; ``kserve/`` is the KServe v2 /
Triton protocol over the same adapters."""
