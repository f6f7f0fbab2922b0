"""The ``piti`` command-line interface (installed as the import package ``piti_cli``)."""
