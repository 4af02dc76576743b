"""RecBole 1.2.1 SASRec and GRU4Rec beside interest-stream, leave-one-out protocol (issue #13).

Run with the main virtualenv's python: ``python -m bench.peers.recbole --help``. The driver
(:mod:`bench.peers.recbole.run`) exports the split (:mod:`.export`), builds RecBole's own
virtualenv (:mod:`.venv`), runs :mod:`.peer` there as a child process, trains and evaluates the
product (:mod:`.ours`) and prints one table (:mod:`.report`). ``peer.py`` and ``splitcheck.py``
also run inside the peer virtualenv, so they import nothing from the project.
"""
