"""The model contract, torch-free: the manifest's schema and every rule that training, export, the
reference runtime (``evaluate/``), the server and the bench share (tokenizers, forecast scaling and
step inputs, decoding limits). See ``docs/architecture.md``."""
