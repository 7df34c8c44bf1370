"""
The ``dvr`` command line (``dvr_plugin.cli.main:main``; also ``python -m dvr_plugin.cli``):
``fit``, ``render``, ``demo``, ``mesh``, ``eval``, ``make-scene`` and the single-view commands.
Each subcommand's parser and handler lives in its own module here; the library below never
imports this package.
"""
