"""The running lab's hosts (as ``inventories/lab.py`` gives them) with extra data per host, for
``tests/lab/test_node_baseline.py``: ``PORTABLE_K3S_TEST_HOST_DATA`` holds JSON like
``{"h2": {"laptop": true}, "h3": {"firmware_policy": {"require_coreboot": "fail"}}}``."""

import json
import os

from portable_k3s.lab.inventory import lab_groups

_extra = json.loads(os.environ.get("PORTABLE_K3S_TEST_HOST_DATA") or "{}")

globals().update(
    {group: [(name, {**data, **_extra.get(name, {})}) for name, data in hosts] for group, hosts in lab_groups().items()}
)
