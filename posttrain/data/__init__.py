"""Data: loading and validation (`formats`), config data sections to rows (`sources`), chat
templates, loss masks and packing (`chat`), length checks with the tokenizer alone before a model
loads (`preflight`), preference pairs (`preferences`), unpaired feedback (`feedback`), and
procedural tasks with their own `check()` (`tasks`).

Import from the submodules (`from posttrain.data.formats import load_rows`); this package itself
imports nothing, so reading a dataset does not pull in torch.
"""
