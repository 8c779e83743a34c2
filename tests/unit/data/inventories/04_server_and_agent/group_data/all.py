"""A host in both k3s_servers and k3s_agents."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "vault", "hostname": f"pass.{domain}"},
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": True, "tcp_port": 25565,
     "proxy_protocol": False},
]

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
