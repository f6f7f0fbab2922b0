"""One module per ``piti`` sub-command; each exposes a click object named ``command``."""
