"""A literal k3s token in group_data/k3s_servers.py."""

k3s_token = "K10abc::server:0123456789abcdef"
