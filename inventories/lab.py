"""The local lab's hosts, read from the running lab (``python -m portable_k3s.lab up``).

h1 sits on the "cloud" site (headscale + entrance); h2 is the k3s server and h3… the agents, on the "home"
site behind NAT. Set PORTABLE_K3S_LAB_STATE_DIR to use a lab other than the default one.
"""

from portable_k3s.config import check_inventory_file
from portable_k3s.lab.inventory import lab_groups

globals().update(lab_groups())

# Validate this inventory with its group_data now, before pyinfra connects to any host.
check_inventory_file(__file__)
