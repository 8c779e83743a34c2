"""The library's operations. Importing them makes pyinfra's planning faster: see ``portable_k3s.planning``."""

from ..planning import fast_operation_order, global_arguments_once

fast_operation_order()
global_arguments_once()
