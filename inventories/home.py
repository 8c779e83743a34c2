"""The seed's cluster: one cloud VM (entrance + headscale), a fanless k3s server, two ThinkPad agents
and a Raspberry Pi exit node.

PLACEHOLDERS: every ``ssh_hostname`` below is a documentation address (RFC 5737) that reaches nothing.
Replace them with your hosts' addresses (or MagicDNS names once the tailnet is up) before deploying.
Check it offline with ``python -m portable_k3s check inventories/home.py``.
"""

from portable_k3s.config import check_inventory_file

_ssh = {"ssh_user": "root"}

headscale = [
    ("cloud", {**_ssh, "ssh_hostname": "203.0.113.10"}),  # PLACEHOLDER: the cloud VM's public address
]
entrance = ["cloud"]

k3s_servers = [
    # The fanless mini PC (the seed warns against the AWOW AK41; any x86 box works).
    ("master", {**_ssh, "ssh_hostname": "192.0.2.10", "hardware": "fanless-pc", "external_ssd": "/dev/sdb"}),
]
k3s_agents = [
    # Two ThinkPads that run as servers (the node baseline's laptop settings: lid, sleep, battery, console).
    ("t420", {**_ssh, "ssh_hostname": "192.0.2.11", "hardware": "thinkpad-t420", "external_ssd": "/dev/sdb",
              "laptop": True}),
    ("t410", {**_ssh, "ssh_hostname": "192.0.2.12", "hardware": "thinkpad-t410", "external_ssd": "/dev/sdb",
              "laptop": True}),
]
exit_nodes = [
    ("pi", {**_ssh, "ssh_hostname": "192.0.2.20", "hardware": "raspberry-pi"}),
]

# Validate this inventory with its group_data now, before pyinfra connects to any host.
check_inventory_file(__file__)
