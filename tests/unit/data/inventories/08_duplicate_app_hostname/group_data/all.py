"""Two apps with the same hostname."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "news", "hostname": f"blog.{domain}", "public": True},
]

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
