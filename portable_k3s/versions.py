"""Version pins: the one place a component's default version is set.

Override a pin for a whole inventory with ``versions = {"tailscale": "1.98.10"}`` in ``group_data/all.py``.
"""

VERSIONS: dict[str, str] = {
    "debian": "bookworm",
    "headscale": "0.29.2",
    "k3s": "v1.35.3+k3s1",
    "tailscale": "1.98.10",
}
