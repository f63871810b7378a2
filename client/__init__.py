"""A Python client for the seqserve gRPC API (only the generated stubs, no server code)."""

from client.api import Client

__all__ = ["Client"]
