"""Values of the wrong type: strings where a bool, an int and a list are expected."""

domain = "example.org"
apps = [
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": "yes", "tcp_port": "25565"},
]
ntp_servers = "pool.ntp.org"

headscale_url = "https://headscale.example.org"
tailnet_domain = "tailnet.example.org"
