"""fleet_wait is an action plugin: its argument spec (plugins/action) and its documentation
(plugins/modules, what ansible-doc shows) are two texts, held equal here."""
import ast
import os

import yaml

from helpers import ROOT


def test_the_action_plugins_argument_spec_is_what_its_documentation_says():
    # The plugin imports the engine as Ansible's collection loader names it (tests/conftest.py).
    from ansible_collections.p2pfleet.imaging.plugins.action import fleet_wait as action
    with open(os.path.join(ROOT, "plugins", "modules", "fleet_wait.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    documentation = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                         and node.targets[0].id == "DOCUMENTATION")
    options = yaml.safe_load(documentation)["options"]
    documented = {name: {key: option[key] for key in ("type", "elements", "required", "default") if key in option}
                  for name, option in options.items()}
    assert documented == action.ARGUMENT_SPEC
