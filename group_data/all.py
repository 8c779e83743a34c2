"""Data for every host of the cluster: domain, app catalog, base settings.

Every key here is validated by ``portable_k3s.config`` before any host is touched:
``python -m portable_k3s check inventories/home.py``.
"""

# The public domain the apps live under. Placeholder: replace with yours.
domain = "example.org"

# Base deploy (portable_k3s.deploys.base): packages every host gets, NTP servers for time sync,
# and SSH hardening (key-only login; root only by key unless "no").
base_packages = ["ca-certificates", "curl", "gnupg", "jq", "iptables", "rsync"]
ntp_servers = ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org", "2.debian.pool.ntp.org"]
ssh_permit_root_login = "prohibit-password"

# The app catalog: the single source of truth for what is public.
# A public app gets an entrance whitelist entry; a private one resolves only inside the tailnet.
# tcp_port: raw TCP apps forwarded by the entrance on that port (PROXY protocol as proxy_protocol says).
apps = [
    {"name": "website", "hostname": domain, "public": True},
    {"name": "projects", "hostname": f"projects.{domain}", "public": True},
    {"name": "blog", "hostname": f"blog.{domain}", "public": True},
    {"name": "emptypad", "hostname": f"emptypad.{domain}", "public": True},
    {"name": "privatebin", "hostname": f"bin.{domain}", "public": True},
    {"name": "kutt", "hostname": f"s.{domain}", "public": True},
    {"name": "nextcloud", "hostname": f"store.{domain}", "public": True},
    {"name": "gitea", "hostname": f"git.{domain}", "public": True},
    {"name": "vaultwarden", "hostname": f"pass.{domain}", "public": False},
    {"name": "ntfy", "hostname": f"ntfy.{domain}", "public": False},
    {"name": "prometheus", "hostname": f"metrics.{domain}", "public": False},
    {"name": "jupyterhub", "hostname": f"hub.{domain}", "public": False},
    {"name": "baikal", "hostname": f"dav.{domain}", "public": False},
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": True, "tcp_port": 25565, "proxy_protocol": False},
]

# The tailnet (portable_k3s.deploys.headscale / .tailscale). headscale_url is what nodes and the tailscale
# apps connect to; tailnet_domain is the MagicDNS domain (it must differ from headscale_url's domain).
headscale_url = f"https://headscale.{domain}"
tailnet_domain = f"tailnet.{domain}"
tailnet_admins = ["admin"]
# ingress_address = "192.168.1.240"  # where private app names resolve (default: the first k3s server's tailnet IP)
