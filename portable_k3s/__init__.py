"""portable-k3s: pyinfra facts, operations and deploys for a cheap, portable k3s cluster over a tailnet."""

__version__ = "0.1.0"
