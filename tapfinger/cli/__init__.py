"""The `tapfinger` command line: one module per sub-command (`main.py` builds the parser). The top
layer: it may import everything, nothing imports it (docs/architecture.md)."""
