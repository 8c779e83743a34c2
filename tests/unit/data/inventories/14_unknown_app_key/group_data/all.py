"""An app with a misspelled key (tcpport instead of tcp_port)."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": True, "tcpport": 25565},
]

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
