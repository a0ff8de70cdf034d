"""`python -m jobs.cli`: the facegrid command without its script (how submitted jobs and servers start it)."""

from jobs.cli.main import app

app()
