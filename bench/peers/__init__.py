"""Peer harnesses: outside recommenders trained on exactly our splits, in virtualenvs of their own.

Nothing here is a dependency of the product; see ``bench/peers/recbole/README.md``.
"""
