"""Load and validate the agent's config file (YAML; JSON is valid YAML too).

Every error names the offending key, and unknown keys are refused: a typo in a rendered
config must not silently fall back to a default.
"""
import logging
import os
from dataclasses import dataclass, field

from ..boot import BACKENDS
from ..errors import ConfigError, P2PFleetError
from ..files import read_yaml
from ..delta import CHECK_MODES, DEFAULT_LINK_RATE
from ..net import parse_announce_urls, parse_endpoint, parse_networks
from ..slots import check_definitions
from . import DEFAULT_SOCKET

log = logging.getLogger("p2pfleet.agent")

DEFAULT_STATE_DIR = "/var/lib/p2pfleet"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Keys a SIGHUP cannot change: they are bound when the agent starts.
RESTART_KEYS = ("listen", "socket", "state_dir")
# Keys renamed, old name -> new name: the old one still works, with a warning, until 0.3.0.
RENAMED = {"local_sources": "local_pieces"}


@dataclass(frozen=True)
class AgentConfig:
    listen: str = "0.0.0.0:6881"
    socket: str = DEFAULT_SOCKET
    state_dir: str = DEFAULT_STATE_DIR
    trackers: tuple = ()
    host_name: str = ""
    allowed_networks: tuple = ()
    upload_limit: int = 0
    download_limit: int = 0
    seed_after_fetch: bool = True
    stall_timeout: float = 300.0
    local_pieces: bool = True
    check_target: str = "auto"
    link_rate: int = DEFAULT_LINK_RATE
    log_level: str = "info"
    # The terminal's slots and boot settings (the modules' ``slots`` and ``boot``): with
    # them, the agent refuses to write the slot running now or the one it falls back to.
    slots: tuple = ()
    boot: dict = field(default_factory=dict)
    source: str = field(default="", compare=False)

    def announce_urls(self, trackers=None) -> list:
        """Announce URLs, with ``host=`` so the tracker's fleet page names this host."""
        urls = list(trackers if trackers else self.trackers)
        if not self.host_name:
            return urls
        return [f"{url}{'&' if '?' in url else '?'}host={self.host_name}" for url in urls]


def _int(data, key, low, high):
    value = data.get(key, getattr(AgentConfig, key))
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: must be an integer in {low}..{high}, got {value!r}")
    return value


BOOT_KEYS = ("backend", "grubenv", "uboot_config")


def _slots(data) -> tuple:
    definitions = data.get("slots", [])
    if definitions == []:
        return ()
    try:
        check_definitions(definitions)
    except P2PFleetError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("slots") else f"slots: {message}") from None
    return tuple(dict(d) for d in definitions)


def _boot(data, slots) -> dict:
    boot = data.get("boot", {})
    if not isinstance(boot, dict):
        raise ConfigError(f"boot: must be a mapping of {', '.join(BOOT_KEYS)}, got {boot!r}")
    if boot and not slots:
        raise ConfigError("boot: given without slots; the boot settings only serve to protect the slots")
    unknown = sorted(str(k) for k in boot if k not in BOOT_KEYS)
    if unknown:
        raise ConfigError(f"boot.{unknown[0]}: unknown key (known: {', '.join(BOOT_KEYS)})")
    if boot.get("backend", "auto") not in BACKENDS:
        raise ConfigError(f"boot.backend: must be one of {', '.join(BACKENDS)}, got {boot['backend']!r}")
    for key in ("grubenv", "uboot_config"):
        value = boot.get(key)
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise ConfigError(f"boot.{key}: must be an absolute path, got {value!r}")
    return {k: v for k, v in boot.items() if v is not None}


def renamed_keys(data: dict, error, where: str = "") -> tuple:
    """``data`` with every renamed key (``RENAMED``) under its new name, and the old names
    that were given (new -> old, for error messages): an old name still works, with a
    warning naming the new one. The agent's config and its API's bodies both go through here."""
    data, given = dict(data), {}
    for old, new in RENAMED.items():
        if old in data:
            if new in data:
                raise error(f"{old}, {new}: the same setting twice; give only {new}")
            log.warning("%s%s is deprecated and stops working in 0.3.0; use %s", where, old, new)
            data[new] = data.pop(old)
            given[new] = old
    return data, given


def parse(data, source: str = "") -> AgentConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values")
    known = set(AgentConfig.__dataclass_fields__) - {"source"}
    unknown = sorted(str(k) for k in data if k not in known and k not in RENAMED)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    data, given = renamed_keys(data, ConfigError, f"{source}: " if source else "")
    listen = data.get("listen", AgentConfig.listen)
    parse_endpoint(listen, error=ConfigError)
    for key in ("socket", "state_dir"):
        value = data.get(key, getattr(AgentConfig, key))
        if not isinstance(value, str) or not os.path.isabs(value):
            raise ConfigError(f"{key}: must be an absolute path, got {value!r}")
    trackers = parse_announce_urls(data.get("trackers", []), "trackers", error=ConfigError)
    host_name = data.get("host_name", "")
    if not isinstance(host_name, str) or not all(c.isalnum() or c in "-_." for c in host_name) or len(host_name) > 253:
        raise ConfigError(f"host_name: must be a host name (letters, digits, - _ .), got {host_name!r}")
    networks = parse_networks(data.get("allowed_networks", []), "allowed_networks", error=ConfigError)
    seed_after = data.get("seed_after_fetch", True)
    if not isinstance(seed_after, bool):
        raise ConfigError(f"seed_after_fetch: must be true or false, got {seed_after!r}")
    stall = data.get("stall_timeout", AgentConfig.stall_timeout)
    if isinstance(stall, bool) or not isinstance(stall, (int, float)) or not 0 <= stall <= 86400:
        raise ConfigError(f"stall_timeout: must be seconds in 0..86400 (0 = never), got {stall!r}")
    local_pieces = data.get("local_pieces", True)
    if not isinstance(local_pieces, bool):
        raise ConfigError(f"{given.get('local_pieces', 'local_pieces')}: must be true or false, got {local_pieces!r}")
    check_target = data.get("check_target", "auto")
    if check_target not in CHECK_MODES:
        raise ConfigError(f"check_target: must be one of {', '.join(CHECK_MODES)}, got {check_target!r}")
    level = data.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    slots = _slots(data)
    boot = _boot(data, slots)
    return AgentConfig(
        listen=str(listen), socket=data.get("socket", DEFAULT_SOCKET),
        state_dir=data.get("state_dir", DEFAULT_STATE_DIR), trackers=tuple(trackers), host_name=host_name,
        allowed_networks=tuple(networks), upload_limit=_int(data, "upload_limit", 0, 1 << 40),
        download_limit=_int(data, "download_limit", 0, 1 << 40), seed_after_fetch=seed_after,
        stall_timeout=float(stall), local_pieces=local_pieces, check_target=check_target,
        link_rate=_int(data, "link_rate", 1, 1 << 40), log_level=level, slots=slots, boot=boot, source=source,
    )


def load(path: str) -> AgentConfig:
    return parse(read_yaml(path, 1 << 20, "agent config", error=ConfigError), path)
