"""copilot-ls: a local, open editor copilot served over the Language Server Protocol."""

__version__ = "0.1.0"
