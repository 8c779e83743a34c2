"""Version pins: the one place a component's default version is set.

Override a pin for a whole inventory with ``versions = {"tailscale": "1.98.10"}`` in ``group_data/all.py``.
"""

VERSIONS: dict[str, str] = {
    "debian": "bookworm",
    "headscale": "0.29.2",
    "k3s": "v1.35.3+k3s1",
    "tailscale": "1.98.10",
}

# The tailscale clients each headscale minor version accepts (its capability version range), as (oldest, newest)
# MAJOR.MINOR; an inventory that pins a client outside the range of its pinned headscale is refused.
HEADSCALE_CLIENTS: dict[str, tuple[str, str]] = {
    "0.29": ("1.80", "1.98"),
}

# Helm charts the cluster add-ons install through k3s's Helm controller: {name: (repository URL, chart version)}.
# The repositories are the upstream projects' own chart repositories, fetched by the cluster, never by this machine.
CHARTS: dict[str, tuple[str, str]] = {
    "metallb": ("https://metallb.github.io/metallb", "0.15.2"),
    "cert-manager": ("https://charts.jetstack.io", "v1.18.5"),
    "rook-ceph": ("https://charts.rook.io/release", "v1.17.7"),
    "jupyterhub": ("https://hub.jupyter.org/helm-chart/", "4.4.0"),
}

# Container images of the app catalog's kinds and of the storage add-on, pinned by tag (an app's ``image`` overrides
# its kind's). Names without a registry host are Docker Hub's.
IMAGES: dict[str, str] = {
    "ceph": "quay.io/ceph/ceph:v19.2.3",
    "static": "nginx:1.28.0-alpine",
    "privatebin": "privatebin/nginx-fpm-alpine:1.7.6",
    "kutt": "kutt/kutt:v3.2.6",
    "nextcloud": "nextcloud:31.0.7-apache",
    "gitea": "gitea/gitea:1.24.5-rootless",
    "vaultwarden": "vaultwarden/server:1.37.2",
    "ntfy": "binwiederhier/ntfy:v2.17.0",
    "prometheus": "prom/prometheus:v3.5.0",
    "baikal": "ckulka/baikal:0.10.1-nginx",
    "minecraft": "itzg/minecraft-server:2025.6.2-java21",
    # App backups: restic, and sqlite3 for the consistent copies of SQLite databases before each backup.
    "restic": "restic/restic:0.18.1",
    "sqlite": "keinos/sqlite3:3.47.2",
}
