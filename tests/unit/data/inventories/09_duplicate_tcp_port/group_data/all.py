"""Two apps on the same raw TCP port."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": True, "tcp_port": 25565},
    {"name": "minecraft-test", "hostname": f"mc-test.{domain}", "public": True, "tcp_port": 25565},
]

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
