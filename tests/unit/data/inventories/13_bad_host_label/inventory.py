"""A host name that is not an RFC 1123 label (upper case, underscore) and no hostname set."""

headscale = [("cloud", {"ssh_hostname": "203.0.113.10"})]
entrance = ["cloud"]
k3s_servers = [("Master_1", {"ssh_hostname": "192.0.2.10"})]
k3s_agents = [("t420", {"ssh_hostname": "192.0.2.11", "external_ssd": "/dev/sdb"})]
