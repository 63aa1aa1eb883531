"""One run: its lifecycle (`train`), its record and lock, checkpoints, callbacks, strategies and what it prints.

`run.py` calls `onelora.commands.run.run(cfg)`, which checks the config and calls `train(cfg)` here.
"""
