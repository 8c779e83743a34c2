"""A domain with an empty label and upper-case letters."""

domain = "Example..org"
apps = []

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
