"""Human feedback collection: sample candidates, label them in a web page, export training data.

``sample.py`` fills a SQLite collection (``db.py``) with n candidates per prompt; ``server.py``
serves the labelling page (``static/``) and its JSON API; ``export.py`` writes the rankings, pairs
and unpaired JSONL files the recipes read, with agreement numbers from ``agreement.py``.
``command.main(argv)`` is the command line (``posttrain collect sample|serve|export``).
"""

from posttrain.collect.command import main

__all__ = ["main"]
