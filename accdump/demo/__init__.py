"""`accdump demo`: a small decoder built in code, run golden and with one planted bug, recorded,
compared and verified, so accdump can be seen finding a real bug in a minute."""

from accdump.demo.bugs import BUGS, Planted
from accdump.demo.run import DemoResult, run_demo

__all__ = ["BUGS", "DemoResult", "Planted", "run_demo"]
