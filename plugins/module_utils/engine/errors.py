"""Errors the engine raises. The message of each is one line an administrator can act on."""


class P2PFleetError(Exception):
    """Base of every error the engine raises on purpose."""


class Cancelled(Exception):
    """A verify pass was cut short because its job is being stopped (never shown to anyone)."""


class ImageError(P2PFleetError):
    """An image or target cannot be read or used as asked."""


class TargetRefused(ImageError):
    """Writing the target would be dangerous (mounted, running root, too small, wrong kind).

    Raised before anything is opened for writing: the target is untouched.
    """


class ManifestError(P2PFleetError):
    """A manifest or torrent is missing, corrupt, or does not describe the image."""


class SessionError(P2PFleetError):
    """The host's session could not move the image (libtorrent refused or reported an error,
    the session did not answer, a command it could not take)."""


class VerifyError(P2PFleetError):
    """The bytes on the target do not match the manifest."""


class ConfigError(P2PFleetError):
    """A config file (the agent's or the tracker's) is missing, unreadable or invalid."""


class StateError(P2PFleetError):
    """The state directory (job records, resume data) cannot be read or written."""


class JobConflict(P2PFleetError):
    """A job cannot be put because it clashes with a job this host already has."""
