"""The attack benchmark's parts (bench/attack.py runs them): the bot and emulator worker
processes, the attack traffic, and what is read of the bot process from /proc."""
