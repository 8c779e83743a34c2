"""Settings of the downtime alerts: the entrances probe the public apps and post to ntfy."""

from __future__ import annotations

from .core import Setting, boolean, integer, optional, secret, string

ENTRANCE = "entrance"
NTFY_URL = r"https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~-]+)+"

SETTINGS: tuple[Setting, ...] = (
    Setting("alerts_ntfy_url", optional(string(NTFY_URL, "ntfy topic URL", "https://HOST/TOPIC, e.g. "
                                               "https://ntfy.sh/my-cluster-alerts, or None for no alerts")),
            "the ntfy topic URL the entrances post to; `None`: no alerts", None, read_on=ENTRANCE,
            default_doc="`None` (no alerts)"),
    secret("alerts_ntfy_token", "an ntfy access token (secret reference): sent as `Authorization: Bearer …`",
           read_on=ENTRANCE),
    Setting("alerts_interval", integer(5, 86400, "whole seconds 5-86400"), "seconds between probes (5-86400)", 60,
            read_on=ENTRANCE),
    Setting("alerts_timeout", integer(1, 60, "whole seconds 1-60"), "seconds an app may take to answer (1-60)", 10,
            read_on=ENTRANCE),
    Setting("alerts_retry", integer(0, 300, "whole seconds 0-300"), "seconds an app that does not answer is asked "
            "again (every 3 s) before it counts as down (0-300); keep it above `entrance_fail_timeout`", 15,
            read_on=ENTRANCE),
    Setting("alerts_allow_http", boolean(), "allow a plain `http://` URL (the token would travel in clear)", False,
            read_on=ENTRANCE),
)
