"""``python -m easel`` runs the ``easel`` command."""

from easel.cli import main

main()
