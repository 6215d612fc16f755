"""Every action plugin validates its options against ARGUMENT_SPEC (plugin_utils/_action.py),
and that spec is the one its documentation (plugins/modules, what ansible-doc shows) states.
Read as text: no import of the plugins, so no collection path is needed."""
import ast
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ACTIONS = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "plugins", "action"))
                 if name.endswith(".py") and not name.startswith("_"))


def _assigned(path, name):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return tree, next(node.value for node in tree.body if isinstance(node, ast.Assign)
                      and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name)


@pytest.mark.parametrize("name", ACTIONS)
def test_the_action_plugin_validates_the_options_its_documentation_states(name):
    tree, spec_node = _assigned(os.path.join(ROOT, "plugins", "action", f"{name}.py"), "ARGUMENT_SPEC")
    spec = eval(compile(ast.Expression(spec_node), name, "eval"), {"__builtins__": {}, "dict": dict})  # pylint: disable=eval-used
    plugin = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ActionModule")
    assert [base.id for base in plugin.bases] == ["ArgSpecAction"], "validates through plugin_utils/_action.py"

    _tree, doc_node = _assigned(os.path.join(ROOT, "plugins", "modules", f"{name}.py"), "DOCUMENTATION")
    options = yaml.safe_load(doc_node.value)["options"]
    documented = {option: {key: value[key] for key in ("type", "elements", "required", "default") if key in value}
                  for option, value in options.items()}
    assert documented == spec
