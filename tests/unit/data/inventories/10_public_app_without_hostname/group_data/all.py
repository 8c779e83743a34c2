"""A public app without a hostname: the entrance could not whitelist it."""

domain = "example.org"
apps = [
    {"name": "blog", "public": True},
    {"name": "vault", "hostname": f"pass.{domain}"},
]

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
