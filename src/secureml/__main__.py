"""``python -m secureml``: the command line."""

from secureml.cli import main

main()
