"""``python -m secureml``: the command line."""

from secureml._entry import main

main()
