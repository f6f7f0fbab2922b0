"""piti's built-in task plugins (installed as ``piti_plugins``; loaded through the ``piti`` entry
points exactly like third-party plugins)."""
