"""Several problems at once: all of them are reported together."""

entrance = [("cloud", {"ssh_hostname": "203.0.113.10"})]
k3s_servers = [
    ("master", {"ssh_hostname": "192.0.2.10"}),
    ("master2", {"ssh_hostname": "192.0.2.13"}),
]
k3s_agents = [("t420", {"ssh_hostname": "192.0.2.11", "hardware": "ThinkPad T420"})]
