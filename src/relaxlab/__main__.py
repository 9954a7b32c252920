"""``python -m relaxlab`` runs the command line."""

from relaxlab.cli import main

main()
