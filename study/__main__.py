"""``python -m study``: the command line, run from the code beside it rather than an installed
copy; what a Ray job submitted with ``--working-dir`` runs (README.md, "Running on a cluster")."""

from study.cli import main

main()
