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

# The app catalog: the single source of truth for what is public and what the cluster runs.
# A public app gets an entrance whitelist entry; a private one resolves only inside the tailnet.
# tcp_port: raw TCP apps forwarded by the entrance on that port (PROXY protocol as proxy_protocol says).
# kind: what the cluster runs (default: the app's name when that is a kind; none: only its entrance/DNS entry):
# container, static, hugo, privatebin, kutt, nextcloud, gitea, vaultwarden, ntfy, prometheus, jupyterhub, baikal,
# minecraft. Each app gets its own namespace, a volume on the rook-ceph StorageClass, a certificate from
# cert-manager; see the README's "App catalog" for each kind's keys. Secrets are references, never literals.
apps = [
    {"name": "website", "kind": "static", "hostname": domain, "public": True},
    # Your own container app: image (PLACEHOLDER: yours, with a pinned tag), port, storage, env, secrets.
    {"name": "projects", "kind": "container", "image": "example/projects:1.0.0", "port": 8080,
     "hostname": f"projects.{domain}", "public": True},
    {"name": "blog", "kind": "hugo", "hostname": f"blog.{domain}", "public": True},
    # Emptypad has no published image: build github.com/aminoa/emptypad and push it (PLACEHOLDER image).
    {"name": "emptypad", "kind": "container", "image": "example/emptypad:1.0.0", "port": 3000,
     "hostname": f"emptypad.{domain}", "public": True},
    {"name": "privatebin", "hostname": f"bin.{domain}", "public": True},
    {"name": "kutt", "hostname": f"s.{domain}", "public": True, "secrets": {"jwt_secret": {"env": "KUTT_JWT_SECRET"}}},
    {"name": "nextcloud", "hostname": f"store.{domain}", "public": True,
     "secrets": {"admin_password": {"env": "NEXTCLOUD_ADMIN_PASSWORD"}}},
    {"name": "gitea", "hostname": f"git.{domain}", "public": True},
    {"name": "vaultwarden", "hostname": f"pass.{domain}", "public": False},
    {"name": "ntfy", "hostname": f"ntfy.{domain}", "public": False},
    {"name": "prometheus", "hostname": f"metrics.{domain}", "public": False},
    {"name": "jupyterhub", "hostname": f"hub.{domain}", "public": False,
     "secrets": {"password": {"env": "JUPYTERHUB_PASSWORD"}}},
    {"name": "baikal", "hostname": f"dav.{domain}", "public": False},
    {"name": "minecraft", "hostname": f"mc.{domain}", "public": True, "tcp_port": 25565, "proxy_protocol": False},
]

# Cluster add-ons (portable_k3s.deploys.cluster): cert-manager's Let's Encrypt issuers (HTTP-01 through the
# entrance by default; "dns01" with dns01_provider and a dns01_token secret), MetalLB pools on the home LAN
# (none: Traefik listens on every node, which the entrance reaches over the tailnet), rook-ceph on the nodes'
# external_ssd (on when every k3s node has one; one replica per node, at most 3).
acme_email = None  # e.g. f"admin@{domain}"
acme_issuer = "letsencrypt-production"
# metallb_pools = ["192.168.1.240/28"]

# The tailnet (portable_k3s.deploys.headscale / .tailscale). headscale_url is what nodes and the tailscale
# apps connect to; tailnet_domain is the MagicDNS domain (it must differ from headscale_url's domain).
headscale_url = f"https://headscale.{domain}"
tailnet_domain = f"tailnet.{domain}"
tailnet_admins = ["admin"]
# ingress_address = "192.168.1.240"  # where private app names resolve (default: the first k3s server's tailnet IP)
