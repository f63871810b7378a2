"""The ``seqserve.v1`` gRPC servicers: validate a request, call the model's task adapter
(``server/tasks/``), build the reply. No decoding or rollout logic lives here."""
