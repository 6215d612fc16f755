"""The agent's config: every error names its key; unknown keys are refused."""
import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.agent import config
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.agent.config import ConfigError


def test_defaults_and_a_full_config():
    assert config.parse({}).listen == "0.0.0.0:6881"
    cfg = config.parse({
        "listen": "10.0.0.5:6881", "socket": "/run/p2pfleet/agent.sock", "state_dir": "/var/lib/p2pfleet",
        "trackers": ["http://10.0.0.1:6969/announce"], "host_name": "pc-101",
        "allowed_networks": ["10.0.0.0/8", "192.168.7.3"], "upload_limit": 0, "download_limit": 125_000_000,
        "seed_after_fetch": False, "stall_timeout": 600, "log_level": "debug"})
    assert [str(n) for n in cfg.allowed_networks] == ["10.0.0.0/8", "192.168.7.3/32"]
    assert cfg.announce_urls() == ["http://10.0.0.1:6969/announce?host=pc-101"]
    assert cfg.announce_urls(["http://t/announce?x=1"]) == ["http://t/announce?x=1&host=pc-101"]
    assert cfg.seed_after_fetch is False and cfg.stall_timeout == 600.0
    assert (cfg.local_pieces, cfg.check_target, cfg.link_rate) == (True, "auto", 125_000_000)
    assert (cfg.slots, cfg.boot) == ((), {})


def test_slots_and_boot_settings_for_the_boot_slot_guard():
    slots = [{"name": "A", "partlabel": "system_a", "boot_entry": "A"}, {"name": "B", "partuuid": "0f1e-b"}]
    cfg = config.parse({"slots": slots, "boot": {"backend": "grub", "grubenv": "/boot/grub/grubenv"}})
    assert cfg.slots == tuple(slots) and cfg.boot == {"backend": "grub", "grubenv": "/boot/grub/grubenv"}
    assert config.parse({"slots": slots}).boot == {}  # the backend is detected
    assert config.parse({"slots": slots, "boot": {"backend": "uboot", "uboot_config": "/etc/fw_env.config",
                                                  "grubenv": None}}).boot == {
        "backend": "uboot", "uboot_config": "/etc/fw_env.config"}


@pytest.mark.parametrize("data, message", [
    ({"listn": "0.0.0.0:1"}, "listn: unknown key"),
    ({"listen": "host:port"}, "invalid endpoint 'host:port'"),
    ({"listen": "0.0.0.0:70000"}, "port out of range"),
    ({"socket": "agent.sock"}, "socket: must be an absolute path"),
    ({"state_dir": 7}, "state_dir: must be an absolute path"),
    ({"trackers": "http://t/announce"}, "trackers: must be a list of http(s):// announce URLs"),
    ({"trackers": ["udp://t:80"]}, "trackers: must be a list"),
    ({"trackers": ["file:///etc/shadow"]}, "trackers: must be a list of http(s):// announce URLs"),
    ({"trackers": ["http:///announce"]}, "trackers: must be a list of http(s):// announce URLs"),
    ({"host_name": "pc 101<script>"}, "host_name: must be a host name"),
    ({"allowed_networks": "10.0.0.0/8"}, "allowed_networks: must be a list of networks"),
    ({"allowed_networks": ["10.0.0.0/33"]}, "allowed_networks: '10.0.0.0/33' is not an IP network"),
    ({"upload_limit": -1}, "upload_limit: must be an integer in 0.."),
    ({"download_limit": True}, "download_limit: must be an integer"),
    ({"seed_after_fetch": "yes"}, "seed_after_fetch: must be true or false"),
    ({"stall_timeout": -5}, "stall_timeout: must be seconds in 0..86400"),
    ({"log_level": "loud"}, "log_level: must be one of debug, info, warning, error"),
    ({"local_sources": "no"}, "local_sources: must be true or false"),
    ({"local_pieces": "no"}, "local_pieces: must be true or false"),
    ({"local_sources": True, "local_pieces": False}, "local_sources, local_pieces: the same setting twice"),
    ({"check_target": "sometimes"}, "check_target: must be one of auto, always, never"),
    ({"link_rate": 0}, "link_rate: must be an integer in 1.."),
    ({"slots": "system_a"}, "slots: define at least two slots"),
    ({"slots": [{"name": "A", "partlabel": "a"}]}, "slots: define at least two slots"),
    ({"slots": [{"name": "A", "partlabel": "a"}, {"partlabel": "b"}]}, "slots[1]: every slot needs a name"),
    ({"slots": [{"name": "A", "partlabel": "a"}, {"name": "B", "partlabel": "b", "size": 5}]},
     "slots[1]: size: unknown key"),
    ({"slots": [{"name": "A", "partlabel": "a"}, {"name": "B", "partlabel": ["b"]}]},
     "slots[1]: partlabel: must be a string"),
    ({"slots": [{"name": "A", "partlabel": "a"}, {"name": "A", "partlabel": "b"}]}, "slots[1]: two slots are named A"),
    ({"slots": [{"name": "A", "partlabel": "a"}, {"name": "B", "partlabel": "b", "device": "/dev/sda3"}]},
     "slots: slot B: give exactly one of partlabel, partuuid, device"),
    ({"boot": {"backend": "grub"}}, "boot: given without slots"),
    ({"slots": [{"name": "A", "device": "/a"}, {"name": "B", "device": "/b"}], "boot": "grub"},
     "boot: must be a mapping of backend, grubenv, uboot_config"),
    ({"slots": [{"name": "A", "device": "/a"}, {"name": "B", "device": "/b"}], "boot": {"backend": "lilo"}},
     "boot.backend: must be one of auto, grub, efi, uboot"),
    ({"slots": [{"name": "A", "device": "/a"}, {"name": "B", "device": "/b"}], "boot": {"grubenv": "grubenv"}},
     "boot.grubenv: must be an absolute path"),
    ({"slots": [{"name": "A", "device": "/a"}, {"name": "B", "device": "/b"}], "boot": {"grub_env": "/x"}},
     "boot.grub_env: unknown key"),
])
def test_each_bad_value_is_refused_naming_its_key(data, message):
    with pytest.raises(ConfigError) as err:
        config.parse(data, "agent.yml")
    assert message in str(err.value)


def test_files_that_are_not_configs(tmp_path):
    with pytest.raises(ConfigError, match="no such agent config"):
        config.load(str(tmp_path / "missing.yml"))
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load(str(tmp_path / "list.yml"))
    (tmp_path / "broken.yml").write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(str(tmp_path / "broken.yml"))
    with pytest.raises(ConfigError, match="not a regular file"):
        config.load("/dev/zero")


def test_a_renamed_key_still_works_and_its_warning_names_the_new_one(caplog):
    assert config.parse({"local_sources": False}, "/etc/p2pfleet/agent.yml").local_pieces is False
    assert "/etc/p2pfleet/agent.yml: local_sources is deprecated and stops working in 0.3.0; use local_pieces" \
        in caplog.text
    caplog.clear()
    assert config.parse({"local_pieces": False}).local_pieces is False and caplog.text == ""
