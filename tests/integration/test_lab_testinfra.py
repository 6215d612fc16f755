"""pytest-testinfra reaches lab hosts over SSH: the pattern the roles' verify steps use."""


def test_testinfra_sees_the_terminal_not_the_controller(lab):
    host = lab.testinfra("t02")
    assert host.check_output("hostname") == "t02"
    assert host.file("/etc/lab-release").content_string == "1\n"
    assert host.service("ssh").is_running
    assert host.mount_point("/var/lib/p2pfleet").exists
    assert host.block_device("/dev/disk/by-partlabel/system_b").size == lab.state["slot_size"]
