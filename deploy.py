"""The reference deploy: ``pyinfra inventories/home.py deploy.py``.

The whole inventory is validated first; a single problem stops the run before any operation is planned.
"""

from functools import partial

from pyinfra import host, inventory, state

from portable_k3s.adapter import speed_up_planning
from portable_k3s.config import TAILNET_GROUPS, validate_state
from portable_k3s.deploys.alerts import downtime_alerts
from portable_k3s.deploys.base import base_host
from portable_k3s.deploys.cluster import cluster_addons
from portable_k3s.deploys.entrance import entrance, entrance_settings, render_entrance
from portable_k3s.deploys.headscale import headscale_server
from portable_k3s.deploys.k3s import k3s_node, retire_moved_server
from portable_k3s.deploys.node_baseline import is_node, node_baseline
from portable_k3s.deploys.tailscale import tailscale_node
from portable_k3s.operations import headscale, nginx, prefetch

cluster = validate_state(state)
speed_up_planning()  # pyinfra's planning, cheaper for every operation: see portable_k3s.adapter

# Every host reads its whole state in this one operation: the entrance too, whose first component is later.
prefetch.host_state(name="Read the host's state in one command")
groups = set(host.groups)
headscale_host = inventory.get_group("headscale")[0]

# Node baseline first, on k3s nodes and exit nodes: its first operation checks the firmware policy, and a host
# whose policy says "fail" fails there, so pyinfra deploys nothing else to it while the other hosts carry on.
if is_node(host.groups):
    node_baseline()

base_host()

if "headscale" in groups:
    headscale_server(policy=cluster.tailnet_policy())

if groups & TAILNET_GROUPS:
    tailscale_node(headscale_host=headscale_host)

k3s_nodes = [*cluster.hosts_in("k3s_servers"), *cluster.hosts_in("k3s_agents")]

# k3s over the tailnet: the servers' operations run before the agents' (an upgrade goes servers first).
if groups & {"k3s_servers", "k3s_agents"}:
    k3s_node(first_server=inventory.get_group("k3s_servers")[0], headscale_host=headscale_host)
    # A node deployed on its own (--limit NODE): the entrances outside this run are pointed at it too.
    for outside in [e for e in inventory.get_group("entrance") if not state.is_host_in_limit(e)]:
        settings = entrance_settings(outside)
        if settings["entrance_upstream"] == "nodes":
            nginx.entrance_followed(
                name=f"Point the entrance {outside.name} at this node too", entrance=outside,
                render_config=partial(render_entrance, cluster.apps, settings),
                backends=[node.hostname for node in k3s_nodes], headscale_host=headscale_host,
            )

# A server move (k3s_move_from on the first server): k3s comes off the old server once every node follows the new.
retire_moved_server(first_server=inventory.get_group("k3s_servers")[0])

# Cluster add-ons and the app catalog: manifests in k3s's auto-deploy directory, on the first server only.
if host.name == inventory.get_group("k3s_servers")[0].name and host.data.get("k3s_state") != "absent":
    cluster_addons(config=cluster, entrances=inventory.get_group("entrance"))

if "entrance" in groups:
    entrance(apps=cluster.apps, backends=[node.hostname for node in k3s_nodes], headscale_host=headscale_host)
    downtime_alerts(apps=cluster.apps)

if "headscale" in groups:
    private = [app.hostname for app in cluster.private_apps() if app.hostname]
    headscale.dns_records(
        name="MagicDNS records for private apps",
        names=private,
        **({"address": cluster.ingress_address} if cluster.ingress_address else {"node": cluster.ingress_node()}),
    )
