"""The engine: the loop (loop.py) and where a run starts (seeding.py). Import from those modules;
this package imports neither, so evo.gitio can use the seed plan without loading the loop."""
