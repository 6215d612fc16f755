"""The LAN tracker: announce/scrape (BEP 3, 7, 23, 48), allow-lists, topology policy, fleet status,
and the controller's reading of that status (fleet.py: done, dropped, stalled)."""
