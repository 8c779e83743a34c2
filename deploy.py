"""The reference deploy: ``pyinfra inventories/home.py deploy.py``.

The whole inventory is validated first; a single problem stops the run before any operation is planned.
"""

from pyinfra import state

from portable_k3s.config import validate_state
from portable_k3s.deploys.base import base_host

validate_state(state)

base_host()
