"""A headscale pin that is not MAJOR.MINOR.PATCH."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "vault", "hostname": f"pass.{domain}"},
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": True, "tcp_port": 25565,
     "proxy_protocol": False},
]
versions = {"headscale": "latest", "tailscale": "v1.98.10"}

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
