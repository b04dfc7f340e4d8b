"""Subcommands of the ``handgrad`` command line."""
