"""Several problems at once: all of them are reported together."""

domain = "example.org"
apps = [
    {"name": "blog", "hostname": "blog.example.net", "public": True},
    {"name": "Blog", "hostname": f"news.{domain}", "public": True},
    {"name": "web", "hostname": f"www.{domain}", "public": True, "tcp_port": 443},
]
versions = {"debian": "buster"}
ssh_permit_root_login = "yes"

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
