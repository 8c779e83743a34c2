"""Two apps named blog."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "blog", "hostname": f"news.{domain}", "public": True},
]

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
