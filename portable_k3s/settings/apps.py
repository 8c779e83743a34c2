"""
Settings of the app catalog: ``apps``, its entries' keys, and the kinds of app the cluster runs.

An entry is checked on its own here (``check_apps``: names, hostnames under the domain, ports, kinds, images,
Kubernetes quantities, volumes, secrets as references, backups); ``portable_k3s.config`` calls it with the
inventory's domain. The manifests of the apps are rendered by ``portable_k3s.manifests.apps``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..schedule import cron_problem
from .backups import CRON_EXPECTED as _CRON_EXPECTED
from .base import domain_type, label_type
from .core import (
    ALL,
    Check,
    Problems,
    Setting,
    boolean,
    custom,
    is_domain,
    is_label,
)
from .core import (
    REFERENCE_SHAPES as _REFERENCE_SHAPES,
)
from .core import (
    check_secret as _check_secret,
)
from .core import (
    int_range_problems as _check_int_range,
)
from .core import (
    show as _show,
)
from .core import (
    wrong_type as _wrong_type,
)

# Keys an app table in ``apps`` may have; each one is read in ``_check_app``.
APP_KEYS: tuple[str, ...] = (
    "name", "hostname", "public", "tcp_port", "proxy_protocol",
    "kind", "image", "port", "storage", "storage_path", "env", "secrets", "resources", "backup", "backup_schedule",
)

# Ports the entrance itself listens on: SSH, HTTP (ACME + redirect) and the TLS passthrough.
RESERVED_PORTS: dict[int, str] = {22: "SSH", 80: "HTTP", 443: "HTTPS"}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class AppKind:
    """
    What the catalog knows about one kind of app.

    + summary: one line for the README
    + image: the ``IMAGES`` pin, or None when the app gives its own ``image`` (the generic container kind)
    + port: the port the container listens on
    + storage: the default volume size (None: no volume unless the app asks for ``storage``)
    + mounts: ``(subPath, mount path)`` of the volume in the container
    + env: environment; ``{hostname}`` and ``{url}`` stand for the app's
    + secrets: ``{secret name: (environment variable, required)}``
    + args: container arguments
    + http: served through Traefik with a certificate (else a raw TCP app, e.g. minecraft)
    + user, group: ``runAsUser`` and ``fsGroup`` (the volume's group)
    + cpu, memory: default requests (memory is also the limit)
    + chart: installed from this ``CHARTS`` Helm chart instead of a Deployment
    + backup: its volume is backed up unless the app says otherwise (``app_backup_s3``)
    + sqlite: it keeps SQLite databases on its volume: each backup first takes a consistent copy of every one
    """

    summary: str
    image: str | None
    port: int = 80
    storage: str | None = "1Gi"
    mounts: tuple[tuple[str, str], ...] = (("", "/data"),)
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, tuple[str, bool]] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    http: bool = True
    user: int | None = None
    group: int | None = None
    cpu: str = "50m"
    memory: str = "128Mi"
    chart: str | None = None
    backup: bool = True
    sqlite: bool = False


KINDS: dict[str, AppKind] = {
    "container": AppKind(
        "any container image of yours (a random project): image, port, optional volume, env and secrets",
        image=None, storage=None, sqlite=True,
    ),
    "static": AppKind(
        "a static website (e.g. your personal site) served by nginx from its volume",
        image="static", mounts=(("", "/usr/share/nginx/html"),), cpu="20m", memory="32Mi",
    ),
    "hugo": AppKind(
        "a Hugo blog: hugo's public/ output served by nginx from its volume",
        image="static", mounts=(("", "/usr/share/nginx/html"),), cpu="20m", memory="32Mi",
    ),
    "privatebin": AppKind(
        "PrivateBin, a pastebin whose server cannot read the pastes", image="privatebin", port=8080,
        mounts=(("", "/srv/data"),), user=65534, group=82, memory="64Mi",
    ),
    "kutt": AppKind(
        "Kutt, a URL shortener (SQLite on its volume)", image="kutt", port=3000, mounts=(("", "/var/lib/kutt"),),
        env={"DB_FILENAME": "/var/lib/kutt/data.sqlite", "DEFAULT_DOMAIN": "{hostname}", "TRUST_PROXY": "true"},
        secrets={"jwt_secret": ("JWT_SECRET", True)}, memory="192Mi", sqlite=True,
    ),
    "nextcloud": AppKind(
        "Nextcloud, files and calendars (SQLite on its volume)", image="nextcloud", storage="50Gi",
        mounts=(("", "/var/www/html"),),
        env={"NEXTCLOUD_TRUSTED_DOMAINS": "{hostname}", "SQLITE_DATABASE": "nextcloud", "NEXTCLOUD_ADMIN_USER": "admin",
             "OVERWRITEPROTOCOL": "https", "TRUSTED_PROXIES": "10.42.0.0/16"},
        secrets={"admin_password": ("NEXTCLOUD_ADMIN_PASSWORD", True)}, group=33, cpu="100m", memory="512Mi",
        sqlite=True,
    ),
    "gitea": AppKind(
        "Gitea, git hosting (SQLite on its volume)", image="gitea", port=3000, storage="10Gi",
        mounts=(("", "/var/lib/gitea"),),
        env={"GITEA_APP_INI": "/var/lib/gitea/custom/conf/app.ini", "GITEA__server__DOMAIN": "{hostname}",
             "GITEA__server__ROOT_URL": "{url}/", "GITEA__database__DB_TYPE": "sqlite3",
             "GITEA__security__INSTALL_LOCK": "true", "GITEA__service__DISABLE_REGISTRATION": "true"},
        secrets={"secret_key": ("GITEA__security__SECRET_KEY", False)}, user=1000, group=1000, memory="256Mi",
        sqlite=True,
    ),
    "vaultwarden": AppKind(
        "Vaultwarden, a Bitwarden-compatible password manager", image="vaultwarden",
        env={"DOMAIN": "{url}", "SIGNUPS_ALLOWED": "false"}, secrets={"admin_token": ("ADMIN_TOKEN", False)},
        memory="64Mi", sqlite=True,
    ),
    "ntfy": AppKind(
        "ntfy, push notifications to your phone", image="ntfy", mounts=(("", "/var/cache/ntfy"),), args=("serve",),
        env={"NTFY_BASE_URL": "{url}", "NTFY_CACHE_FILE": "/var/cache/ntfy/cache.db", "NTFY_BEHIND_PROXY": "true",
             "NTFY_LISTEN_HTTP": ":80"},
        memory="64Mi", sqlite=True,
    ),
    "prometheus": AppKind(
        "Prometheus, metrics of the cluster's nodes, pods and services", image="prometheus", port=9090,
        storage="10Gi", mounts=(("", "/prometheus"),),
        args=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
              "--storage.tsdb.retention.time=15d", "--web.external-url={url}"),
        user=65534, group=65534, cpu="100m", memory="512Mi", backup=False,
    ),
    "jupyterhub": AppKind(
        "JupyterHub (its Helm chart): one notebook server per user, each with a volume", image=None,
        storage="10Gi", secrets={"password": ("", True)}, chart="jupyterhub", cpu="100m", memory="512Mi",
    ),
    "baikal": AppKind(
        "Baïkal, a CalDAV/CardDAV server", image="baikal",
        mounts=(("config", "/var/www/baikal/config"), ("specific", "/var/www/baikal/Specific")), memory="64Mi",
        sqlite=True,
    ),
    "minecraft": AppKind(
        "a Minecraft server (raw TCP: give it tcp_port 25565)", image="minecraft", port=25565, storage="10Gi",
        env={"EULA": "TRUE", "TYPE": "VANILLA", "MEMORY": "2G"}, http=False, cpu="500m", memory="2560Mi",
    ),
}


def kind_of(app: App) -> AppKind | None:
    """The app's kind (``kind``, else its name when that is a kind), or None for an app deployed elsewhere."""
    name = app.kind or (app.name if app.name in KINDS else None)
    return KINDS.get(name) if name else None



@dataclass(frozen=True)
class App:
    """
    One entry of the app catalog (``apps`` in group_data/all.py).

    + name: unique slug, e.g. ``blog``
    + hostname: DNS name the app is served at (the domain or a name under it)
    + public: let it in through the entrance (else it resolves only inside the tailnet)
    + tcp_port: a raw TCP port the entrance forwards (e.g. 25565 for minecraft)
    + proxy_protocol: send the PROXY protocol header on ``tcp_port``
    + kind: what the cluster runs for it (``KINDS``); default: its name when that is
      a kind, else nothing (only its entrance or DNS entry: a service deployed some other way)
    + image: the container image (required for the ``container`` kind; else overrides the kind's pin)
    + port: the port the container listens on (default: the kind's)
    + storage: the size of its volume, e.g. ``10Gi`` (default: the kind's)
    + storage_path: where the volume is mounted (the ``container`` kind; default ``/data``)
    + env: more environment variables
    + secrets: secret references by name: the kind's (e.g. nextcloud's ``admin_password``), or for the
      ``container`` kind environment variable names
    + resources: ``{"cpu": "100m", "memory": "256Mi"}`` requests (memory is also the limit)
    + backup: back its volume up with the other apps' (``app_backup_s3``); default: the kind's (on, except for
      prometheus)
    + backup_schedule: its own cron schedule (default ``app_backup_schedule``)
    """

    name: str
    hostname: str | None = None
    public: bool = False
    tcp_port: int | None = None
    proxy_protocol: bool = True
    kind: str | None = None
    image: str | None = None
    port: int | None = None
    storage: str | None = None
    storage_path: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    backup: bool | None = None
    backup_schedule: str | None = None

    @property
    def deployed(self) -> bool:
        """The cluster runs it (it has a kind)."""
        return kind_of(self) is not None



_check_domain = domain_type().check
_check_name = label_type("app name", "blog or home-assistant").check
_check_bool = boolean().check


def _check_port(value: Any) -> Check:
    expected = "an integer port 1-65535, not 22, 80 or 443"
    if not isinstance(value, int) or isinstance(value, bool):
        return [(_wrong_type(value), expected)]
    if not 1 <= value <= 65535:
        return [(f"{value} is out of range", expected)]
    if value in RESERVED_PORTS:
        return [(f"{value} is reserved by the entrance ({RESERVED_PORTS[value]})", expected)]
    return []


# Apps
#


def check_apps(
    value: Any, where: str, domain: str | None, problems: Problems, require_secrets: bool = False,
    cwd: str | None = None,
) -> list[App]:
    if not isinstance(value, list | tuple):
        problems.add(f"{where}.apps", _wrong_type(value), 'a list of apps like {"name": "blog", ...}')
        return []
    apps: list[App] = []
    seen: dict[str, dict[Any, int]] = {"name": {}, "hostname": {}, "tcp_port": {}}
    for index, raw in enumerate(value):
        key = f"{where}.apps[{index}]"
        if not isinstance(raw, dict):
            problems.add(key, _wrong_type(raw), 'an app like {"name": "blog", "hostname": "blog.DOMAIN"}')
            continue
        app = _check_app(raw, key, domain, problems, require_secrets, cwd)
        if app is None:
            continue
        for field_name, first in seen.items():
            field_value = getattr(app, field_name)
            if field_value is None:
                continue
            if field_value in first:
                shown = repr(field_value) if isinstance(field_value, str) else str(field_value)
                problems.add(
                    f"{key}.{field_name}",
                    f"{shown} is also the {field_name} of apps[{first[field_value]}]",
                    f"a unique {field_name} per app",
                )
            first.setdefault(field_value, index)
        apps.append(app)
    return apps


def _check_app(
    raw: dict[Any, Any], key: str, domain: str | None, problems: Problems, require_secrets: bool = False,
    cwd: str | None = None,
) -> App | None:
    before = len(problems.lines)
    for unknown in raw:
        if unknown not in APP_KEYS:
            problems.add(f"{key}.{unknown}", "is not an app key", f"only {', '.join(APP_KEYS)}")

    name = raw.get("name")
    if "name" not in raw:
        problems.add(f"{key}.name", "is missing", "a unique app name like blog")
    else:
        for problem, expected in _check_name(name):
            problems.add(f"{key}.name", problem, expected)

    hostname = raw.get("hostname")
    if hostname is not None:
        check = _check_domain(hostname)
        for problem, expected in check:
            problems.add(f"{key}.hostname", problem, expected)
        if not check and domain and hostname != domain and not hostname.endswith(f".{domain}"):
            problems.add(
                f"{key}.hostname",
                f"{hostname!r} is not under the domain {domain!r}",
                f"{domain} or a name like NAME.{domain}",
            )

    public = raw.get("public", False)
    for problem, expected in _check_bool(public):
        problems.add(f"{key}.public", problem, expected)
    if public is True and hostname is None:
        problems.add(
            f"{key}.hostname",
            "is missing for a public app",
            f"a hostname the entrance lets in, like NAME.{domain or 'example.org'}",
        )

    proxy_protocol = raw.get("proxy_protocol", True)
    for problem, expected in _check_bool(proxy_protocol):
        problems.add(f"{key}.proxy_protocol", problem, expected)

    tcp_port = raw.get("tcp_port")
    if tcp_port is not None:
        for problem, expected in _check_port(tcp_port):
            problems.add(f"{key}.tcp_port", problem, expected)

    deployment = _check_app_deployment(raw, key, domain, problems, require_secrets, cwd)

    if len(problems.lines) > before and not (isinstance(name, str) and is_label(name)):
        return None
    return App(
        name=str(name),
        hostname=hostname if isinstance(hostname, str) and is_domain(hostname) else None,
        public=public is True,
        tcp_port=tcp_port if isinstance(tcp_port, int) and not _check_port(tcp_port) else None,
        proxy_protocol=proxy_protocol is not False,
        **deployment,
    )


_IMAGE_RE = re.compile(r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*"
                       r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")
# Kubernetes quantities (resource.Quantity): a decimal number with an SI, binary or exponent suffix.
_QUANTITY = re.compile(r"^\+?(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|"
                       r"[eE][+-]?[0-9]+)?$")
_SUFFIX: dict[str, int | Decimal] = {
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": Decimal("1e-9"),
           "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "P": 10**15, "E": 10**18}
# The smallest sensible amount of each resource, and how the problem line describes it.
_QUANTITY_RULES = {
    "storage": (Decimal(2**20), "a size of at least 1Mi as Kubernetes writes it, like 10Gi, 512M or 1.5Gi"),
    "cpu": (Decimal("0.001"), "CPU of at least 1m as Kubernetes writes it, like 100m, 0.5 or 2"),
    "memory": (Decimal(2**20), "memory of at least 1Mi as Kubernetes writes it, like 256Mi, 512M or 1.5Gi"),
}


def parse_quantity(text: Any) -> Decimal | None:
    """A Kubernetes quantity (``512M``, ``1.5Gi``, ``100m``, ``1e3``) as a number, or None when it is not one."""
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if not match:
        return None
    suffix = match.group("suffix") or ""
    number = Decimal(match.group("number"))
    if suffix[:1] in ("e", "E") and suffix not in _SUFFIX:
        return number * Decimal(10) ** int(suffix[1:])
    return number * Decimal(_SUFFIX[suffix])


def _quantity_problem(resource: str, value: Any) -> str | None:
    amount = parse_quantity(value)
    if amount is None:
        return f"{_show(value)} is not a quantity"
    if amount < _QUANTITY_RULES[resource][0]:
        return f"{_show(value)} is less than the smallest {resource} accepted"
    return None
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
APP_NAME_MAX = 59  # its namespace is app-NAME, a label of at most 63


def _is_pinned_image(value: Any) -> bool:
    if not isinstance(value, str) or not _IMAGE_RE.match(value):
        return False
    if "@sha256:" in value:
        return True
    tag = value.rsplit("/", 1)[-1].partition(":")[2]
    return bool(tag) and tag != "latest"


def _check_app_backup(raw: dict[Any, Any], key: str, kind: AppKind, kind_name: str, problems: Problems
                      ) -> dict[str, Any]:
    """An app's ``backup`` and ``backup_schedule``; returns the valid ones as ``App`` fields."""
    found: dict[str, Any] = {}
    if "backup" in raw:
        check = _check_bool(raw["backup"])
        for problem, expected in check:
            problems.add(f"{key}.backup", problem, expected + " (False: its volume is not backed up)")
        has_volume = not kind.chart and (raw.get("storage") or kind.storage)
        if not check and raw["backup"] and not has_volume:
            what = "its Helm chart's volumes" if kind.chart else "no volume (give it storage)"
            problems.add(f"{key}.backup", f"True for a {kind_name} app with {what}",
                         "False, or an app with a volume (storage)")
        elif not check:
            found["backup"] = raw["backup"]
    if raw.get("backup_schedule") is not None:
        wrong = cron_problem(raw["backup_schedule"])
        if wrong:
            problems.add(f"{key}.backup_schedule", f"{_show(raw['backup_schedule'])}: {wrong}", _CRON_EXPECTED)
        else:
            found["backup_schedule"] = raw["backup_schedule"]
    return found




def _check_app_deployment(
    raw: dict[Any, Any], key: str, domain: str | None, problems: Problems, require_secrets: bool, cwd: str | None,
) -> dict[str, Any]:
    """The keys of an app that the cluster runs (``kind`` …); returns the valid ones as ``App`` fields."""
    found: dict[str, Any] = {}
    name = raw.get("name")
    kind_name = raw.get("kind")
    if kind_name is not None and (not isinstance(kind_name, str) or kind_name not in KINDS):
        problems.add(f"{key}.kind", f"{_show(kind_name)} is not an app kind", f"one of {', '.join(KINDS)}")
        return found
    if kind_name is not None:
        found["kind"] = kind_name
    kind = KINDS.get(kind_name) if kind_name else KINDS.get(name) if isinstance(name, str) else None
    deployed_keys = [k for k in ("image", "port", "storage", "storage_path", "env", "secrets", "resources", "backup",
                                 "backup_schedule") if k in raw]
    if kind is None:
        for unused in deployed_keys:
            problems.add(f"{key}.{unused}", "is set, but the cluster does not run an app without a kind",
                         f"a kind as well, one of {', '.join(KINDS)}, or no {unused}")
        return found
    if isinstance(name, str) and len(name) > APP_NAME_MAX:
        problems.add(f"{key}.name", f"{name!r} is longer than {APP_NAME_MAX} characters",
                     f"an app name of at most {APP_NAME_MAX} characters (its namespace is app-NAME)")
    if kind.http and raw.get("hostname") is None:
        problems.add(f"{key}.hostname", "is missing for an app served over https",
                     f"the name it is served at, like NAME.{domain or 'example.org'}")
    image = raw.get("image")
    if image is None and kind.image is None and not kind.chart:
        problems.add(f"{key}.image", f"is missing for a {kind_name or name} app",
                     "a container image with a pinned tag, like example/site:1.2.0")
    elif image is not None and not _is_pinned_image(image):
        problems.add(f"{key}.image", f"{_show(image)} is not an image with a pinned tag",
                     "an image with a version tag or digest, like example/site:1.2.0 (not :latest)")
    elif image is not None:
        found["image"] = image
    if "port" in raw:
        check = _check_int_range(raw["port"], 1, 65535, "the container's port, 1-65535")
        for problem, expected in check:
            problems.add(f"{key}.port", problem, expected)
        if not check:
            found["port"] = raw["port"]
    if raw.get("storage") is not None:
        wrong = _quantity_problem("storage", raw["storage"])
        if wrong:
            problems.add(f"{key}.storage", wrong, _QUANTITY_RULES["storage"][1])
        else:
            found["storage"] = raw["storage"]
    if raw.get("storage_path") is not None:
        if isinstance(raw["storage_path"], str) and _PATH_RE.match(raw["storage_path"]):
            found["storage_path"] = raw["storage_path"]
        else:
            problems.add(f"{key}.storage_path", f"{_show(raw['storage_path'])} is not an absolute path",
                         "where the volume is mounted in the container, like /data")
    if "env" in raw:
        env = raw["env"]
        if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_NAME_RE.match(k) and isinstance(v, str)
                                                for k, v in env.items()):
            problems.add(f"{key}.env", f"{_show(env)} is not an environment",
                         'a dict of NAME: "value" strings (secrets go in secrets)')
        else:
            found["env"] = dict(env)
    if "resources" in raw:
        resources = raw["resources"]
        if not isinstance(resources, dict):
            problems.add(f"{key}.resources", _wrong_type(resources), '{"cpu": "100m", "memory": "256Mi"}')
        else:
            for res, quantity in resources.items():
                if res not in ("cpu", "memory"):
                    problems.add(f"{key}.resources.{res}", "is not a resource", "cpu or memory")
                elif wrong := _quantity_problem(res, quantity):
                    problems.add(f"{key}.resources.{res}", wrong, _QUANTITY_RULES[res][1])
            found["resources"] = {k: v for k, v in resources.items() if k in ("cpu", "memory") and isinstance(v, str)}
    found.update(_check_app_backup(raw, key, kind, str(kind_name or name), problems))
    secrets = raw.get("secrets", {})
    if not isinstance(secrets, dict):
        problems.add(f"{key}.secrets", _wrong_type(secrets),
                     'a dict of secret references like {"NAME": {"env": "VAR"}}')
        return found
    names = dict(kind.secrets)
    for secret_name, ref in secrets.items():
        if names and secret_name not in names:
            problems.add(f"{key}.secrets.{secret_name}", f"is not a secret of a {kind_name or name} app",
                         f"one of {', '.join(names)}")
            continue
        if not names and not (isinstance(secret_name, str) and _ENV_NAME_RE.match(secret_name)):
            problems.add(f"{key}.secrets.{_show(secret_name)}", "is not an environment variable name",
                         "names like API_KEY: each secret becomes that environment variable")
            continue
        for problem, expected in _check_secret(ref, require_secrets, cwd):
            problems.add(f"{key}.secrets.{secret_name}", problem, expected)
    for secret_name, (_env, required) in names.items():
        if required and secret_name not in secrets:
            problems.add(f"{key}.secrets.{secret_name}", f"is missing for a {kind_name or name} app",
                         f"{_REFERENCE_SHAPES}, e.g. {{\"env\": \"{(str(name)).upper().replace('-', '_')}_"
                         f"{secret_name.upper()}\"}}")
    found["secrets"] = dict(secrets)
    return found


SETTINGS: tuple[Setting, ...] = (
    Setting("apps", custom(lambda v: [] if isinstance(v, list | tuple) else [
        (_wrong_type(v), 'a list of apps like {"name": "blog", ...}')], {"type": "array", "items": {
            "type": "object", "required": ["name"], "properties": {key: {} for key in APP_KEYS},
            "additionalProperties": False}}),
        'the app catalog: each entry\'s keys are in "App catalog"', [], ALL, "every host"),
)
