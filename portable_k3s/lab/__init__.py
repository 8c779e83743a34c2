"""The local lab of real Debian hosts (systemd-nspawn) that the tests and the demo deploy to."""

from .core import Lab, LabConfig, LabError, LabHost
from .inventory import lab_groups

__all__ = ["Lab", "LabConfig", "LabError", "LabHost", "lab_groups"]
