"""``python -m autosched.cli``: the same app as the ``autosched`` console script."""

from autosched.cli import app

app()
