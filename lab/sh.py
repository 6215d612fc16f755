"""Running the commands the lab is made of, with errors that say which command failed."""
import subprocess


class LabError(Exception):
    """A lab operation failed; the message is one line meant for the administrator."""


def run(*cmd, input=None, check=True, netns=None):
    """Run ``cmd`` (optionally inside network namespace ``netns``); returns stdout."""
    if netns:
        cmd = ("ip", "netns", "exec", netns) + cmd
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
