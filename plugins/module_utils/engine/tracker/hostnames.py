"""Which host an announce speaks for: a host name belongs to an address.

The fleet status (and with it ``fleet_status``, ``fleet_wait`` and the fleet page) names
terminals by the ``host=`` their agents append to the announce URL. Anyone inside the allowed
networks can send any ``host=``, so a name is only taken from the address it is bound to:

- **Bound by the config** (``hosts``: address -> name; the tracker role renders it from the
  inventory): an announce from a bound address is that host, *verified*. A ``host=`` naming
  another host is refused, and so is the bound name from any other address. Refused, not
  ignored: the announce is wrong about who sent it, so it changes nothing and the sender gets
  a failure reason naming both addresses (an agent with a wrong ``host_name`` shows it in its
  tracker error instead of being filed under another name).
- **Not in the config** (small labs without a ``hosts`` map): the first address to announce a
  name holds it, *unverified*, for as long as the tracker remembers that host's rows (silent
  and stopped rows included, see ``Tracker.hold_names_for``); the same name from another
  address meanwhile is refused. Only the ``hosts`` map survives a tracker restart.

A name never decides a peer's group or origin role (the topology goes by address), so a
refused or unverified name can at most mislabel a row, never redirect the swarm.
"""

from .announce import AnnounceError


class HostRefused(AnnounceError):
    """The announce's ``host=`` is bound to another address."""


class HostNames:
    def __init__(self, bound, hold_for):
        """``bound``: address -> name from the config; ``hold_for``: seconds a first-come name
        stays with its address after that address last used it."""
        self._bound = dict(bound)
        self._addresses = {}
        for address, name in self._bound.items():
            self._addresses.setdefault(name, []).append(address)
        self._hold_for = hold_for
        self._claims = {}           # unbound name -> [address, last time it announced it]

    def resolve(self, ip, claimed, now):
        """``(name, verified)`` for an announce from ``ip`` with ``host=claimed`` (or None).

        Raises HostRefused, and records nothing, when ``claimed`` belongs to another address.
        """
        bound = self._bound.get(ip)
        if bound is not None:
            if claimed is not None and claimed != bound:
                raise HostRefused(f"host {claimed} refused: this address, {ip}, is {bound} in the "
                                  f"tracker's hosts map")
            return bound, True
        if claimed is None:
            return None, False
        addresses = self._addresses.get(claimed)
        if addresses is not None:
            raise HostRefused(f"host {claimed} refused: the tracker's hosts map binds {claimed} to "
                              f"{', '.join(map(str, addresses))}, not to {ip}")
        claim = self._claims.get(claimed)
        if claim is not None and claim[0] != ip and now - claim[1] <= self._hold_for:
            raise HostRefused(f"host {claimed} refused: {claimed} announces from {claim[0]}, not {ip} "
                              f"(a name not in the tracker's hosts map stays with the first address "
                              f"that uses it until that host is forgotten)")
        self._claims[claimed] = [ip, now]
        return claimed, False

    def expire(self, now):
        for name in [n for n, (_ip, last) in self._claims.items() if now - last > self._hold_for]:
            del self._claims[name]
