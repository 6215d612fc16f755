"""The Ansible inventory a lab writes: the shape a real lab's inventory has (docs/lab.md)."""
import json
import re


def data(state, wheelhouse):
    hosts = state["hosts"]
    terminals = {}
    for name, host in hosts.items():
        if host["role"] != "terminal":
            continue
        terminals[name] = {
            "ansible_host": host["address"],
            "p2pfleet_room": f"room{host['room']}",
            "p2pfleet_boot": {"backend": "grub", "grubenv": "/boot/grub/grubenv"},
            "p2pfleet_slots": [
                {"name": "A", "partlabel": "system_a", "boot_entry": "A"},
                {"name": "B", "partlabel": "system_b", "boot_entry": "B"},
            ],
            "p2pfleet_state_partlabel": "p2pfleet_state",
        }
    server = {"server": {"ansible_host": hosts["server"]["address"]}}
    rooms = {}
    for name, host in terminals.items():
        rooms.setdefault(host["p2pfleet_room"], {})[name] = None
    return {"all": {
        "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": state["key"],
            # host keys are made at each host's first boot (per slot), and lab addresses are reused
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
            # one SSH round trip per task instead of several: a lab's runs are mostly SSH
            "ansible_pipelining": True,
            "p2pfleet_lab": state["name"],
            "p2pfleet_wheelhouse": wheelhouse,
            "p2pfleet_images_dir": "/srv/images",
        },
        "children": {
            "tracker": {"hosts": server},
            "seeders": {"hosts": {"server": None}},
            "terminals": {"hosts": terminals},
            **{room: {"hosts": members} for room, members in sorted(rooms.items())},
        },
    }}


def scalar(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_./-]*", text) else json.dumps(text)


def to_yaml(value, indent=0):
    """Block-style YAML for nested dicts, lists and scalars (the lab needs no YAML library)."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 1))
            elif isinstance(item, (dict, list)):
                lines.append(f"{pad}{key}: {json.dumps(item)}")
            else:
                lines.append(f"{pad}{key}: {scalar(item)}".rstrip())
    else:
        for item in value:
            body = to_yaml(item, indent + 1).lstrip() if isinstance(item, (dict, list)) else scalar(item)
            lines.append(f"{pad}- {body}")
    return "\n".join(lines)


def write(state, path, wheelhouse):
    with open(path, "w") as f:
        f.write(f"# Ansible inventory of lab {state['name']}, written by `lab up` (see docs/lab.md).\n")
        f.write(to_yaml(data(state, wheelhouse)) + "\n")
