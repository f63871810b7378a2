"""The seqserve API: the ``.proto`` files here, and the Python code generated beside them by the build
(``python -m protos.generate``; git-ignored). The server, the client and the bench all import it as
``protos.seqserve.v1``; health and reflection come from grpcio-health-checking and grpcio-reflection."""
