"""A stand-in for Microsoft Graph and Teams' media processors on one machine.

Written from the Graph documentation (https://learn.microsoft.com/en-us/graph/api/resources/call
and the pages it links), independently of bot/ and media/, so that a shape error in the bot is
caught here rather than mirrored.
"""

from emulator.server import Emulator, EmulatorConfig, EmulatorThread

__all__ = ["Emulator", "EmulatorConfig", "EmulatorThread"]
