"""`p2pfleet agent|tracker --check`: what the roles run on every config they render."""
import os

import pytest

from conftest import ROOT, run_cli

EXAMPLE = os.path.join(ROOT, "docs", "examples", "tracker.yml")


@pytest.mark.parametrize("daemon,good", [
    ("agent", 'listen: "0.0.0.0:6881"\ntrackers: ["http://10.0.0.1:6969/announce"]\n'),
    ("tracker", open(EXAMPLE).read()),
])
def test_check_accepts_a_good_config_and_refuses_a_bad_one_with_its_key(daemon, good, tmp_path):
    config = tmp_path / f"{daemon}.yml"
    config.write_text(good)
    ok = run_cli(daemon, "--check", "--config", config)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{config}: config OK", ok.stderr
    config.write_text(good + "log_level: loud\n")
    bad = run_cli(daemon, "--check", "--config", config)
    assert bad.returncode == 1
    assert "log_level" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
