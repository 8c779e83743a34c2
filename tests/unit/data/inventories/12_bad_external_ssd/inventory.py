"""external_ssd given as a bare device name."""

headscale = [("cloud", {"ssh_hostname": "203.0.113.10"})]
entrance = ["cloud"]
k3s_servers = [("master", {"ssh_hostname": "192.0.2.10", "external_ssd": "sdb"})]
k3s_agents = [("t420", {"ssh_hostname": "192.0.2.11", "external_ssd": "/dev/sdb"})]
