"""Data: loading and validation (`formats`), chat templates, loss masks and packing (`chat`), and
procedural tasks with their own `check()` (`tasks`).

Import from the submodules (`from posttrain.data.formats import load_rows`); this package itself
imports nothing, so reading a dataset does not pull in torch.
"""
