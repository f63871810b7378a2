"""Package ``inference`` (KServe v2 / Triton, ``kserve.proto``): its generated code registers in ``POOL``, a
descriptor pool of its own, not protobuf's default one, so that a process may also import tritonclient's
modules, which define the same package (protobuf refuses a symbol defined twice in one pool)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
