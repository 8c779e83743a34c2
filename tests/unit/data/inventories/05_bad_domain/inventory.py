"""A domain with an empty label and upper-case letters."""

headscale = [("cloud", {"ssh_hostname": "203.0.113.10"})]
entrance = ["cloud"]
k3s_servers = [("master", {"ssh_hostname": "192.0.2.10", "external_ssd": "/dev/sdb"})]
k3s_agents = [("t420", {"ssh_hostname": "192.0.2.11", "external_ssd": "/dev/sdb"})]
