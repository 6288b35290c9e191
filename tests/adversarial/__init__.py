"""The adversarial suite: a real ``pplx-embed serve`` process and the CLI, probed as an attacker would.

``hostile`` holds the seeded generator of bad requests, the raw-socket client and the server process;
``bench/soak_serve.py`` runs the same generator for longer.
"""
