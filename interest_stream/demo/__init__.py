"""``interest-stream demo``: the whole product, end to end, on the bundled Taobao sample.

:func:`run_demo` (:mod:`.run`) finds or starts Kafka (:mod:`.feed`), goes live with a
quick model while the full one trains in the background and rolls out by hot reload
(:mod:`.model`), runs a worker and the API as child processes, replays the events
while printing live figures, and stops everything it started. :class:`DemoOptions`
(:mod:`.options`) is what the CLI fills. Design notes: docs/DESIGN.md ("Demo").
"""

from interest_stream.demo.options import DemoOptions
from interest_stream.demo.run import run_demo

__all__ = ["DemoOptions", "run_demo"]
