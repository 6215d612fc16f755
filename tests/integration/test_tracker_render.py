"""The tracker role renders rooms, bridges and site seeders from the inventory, and the
tracker reads what it rendered: the role's own tasks (tasks/config.yml) and template run by
ansible-playbook on the controller, no host changed; the result loaded by the engine."""
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.config import load
from helpers.modules import ROOT, collections_path
from helpers.playbook import run_playbook

INVENTORY = """
seeders:
  hosts:
    server: {ansible_host: 10.20.0.10}
site_seeders:
  hosts:
    cache-branch: {ansible_host: 10.30.0.5, p2pfleet_room: branch}
terminals:
  hosts:
    pc-hq-01: {ansible_host: 10.20.1.101, p2pfleet_room: head-office}
    pc-hq-02: {ansible_host: 10.20.1.102, p2pfleet_room: head-office}
    pc-br-01: {ansible_host: 10.30.1.101, p2pfleet_room: branch}
"""


def render(tmp_path, inventory, **variables):
    (tmp_path / "inventory.yml").write_text(inventory)
    out = tmp_path / "tracker.yml"
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "vars": variables,
             "tasks": [{"ansible.builtin.include_role": {"name": "p2pfleet.imaging.tracker", "tasks_from": "config", "public": True}},
                       {"ansible.builtin.template": {"src": f"{ROOT}/roles/tracker/templates/tracker.yml.j2",
                                                     "dest": str(out), "mode": "0600"}}]}]
    run = run_playbook(str(tmp_path / "inventory.yml"), collections_path(tmp_path / "collections"), play)
    assert run.rc == 0, run.tail()
    return load(str(out)), out.read_text()


def test_two_sites_with_a_cache_host_render_groups_bridges_and_the_site_seeder(tmp_path):
    cfg, text = render(tmp_path, INVENTORY, tracker_bridges=3, tracker_group_bridges={"branch": 1}, tracker_stripes=False)
    topo = cfg.topology
    assert not topo.stripes
    by_name = {name: address for address, name in cfg.hosts.items()}
    assert topo.group_of(by_name["cache-branch"]) == "branch" == topo.group_of(by_name["pc-br-01"])
    assert topo.group_of(by_name["pc-hq-02"]) == "head-office"
    assert topo.is_site_seeder(by_name["cache-branch"]) and not topo.is_site_seeder(by_name["pc-br-01"])
    assert topo.is_seeder(by_name["server"]) and topo.bridges == 3
    assert topo.bridges_of("branch") == 1 and topo.bridges_of("head-office") == 3
    assert "seeders: [\"cache-branch\"]" in text.replace("'", '"'), text


def test_an_inventory_without_site_seeders_renders_two_bridges_per_room(tmp_path):
    inventory = INVENTORY.replace("site_seeders:\n  hosts:\n    cache-branch: {ansible_host: 10.30.0.5, p2pfleet_room: branch}\n", "")
    cfg, _text = render(tmp_path, inventory)
    assert cfg.topology.bridges == 2 and cfg.topology.stripes
    assert not cfg.topology.site_seeder_addresses and not cfg.topology.site_seeder_networks
    assert sorted({g for _n, g in cfg.topology.group_networks}) == ["branch", "head-office"]
