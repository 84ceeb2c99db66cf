"""pyftpdlib's scheduler with airgap's reset: a restarted countdown holds no other timer back.

The real pyftpdlib IO loop, driven by hand: timer A is restarted again and again, as a control
connection's idle timer is by every command; timer B, due meanwhile, must run when it is due.
"""

from __future__ import annotations

import time

from pyftpdlib.ioloop import IOLoop

from airgap.server.ftp.timers import keep_timers_in_order


def test_a_restarted_countdown_holds_no_other_timer_back() -> None:
    assert keep_timers_in_order()  # the pyftpdlib installed is the one it was written for
    loop = IOLoop()
    try:
        started, fired = time.monotonic(), {}

        def mark(name: str) -> None:
            fired[name] = time.monotonic() - started

        restarted = loop.call_later(0.5, mark, "A")
        loop.call_later(0.6, mark, "B")
        while time.monotonic() - started < 2.0:
            if time.monotonic() - started < 1.2:
                restarted.reset()  # a command line on the control connection
            loop.sched.poll()
            time.sleep(0.02)
        # pyftpdlib's own reset left B below A until A came due: B ran at about 1.7 s
        assert 0.6 <= fired["B"] < 0.9, fired
        assert 1.6 <= fired["A"] < 1.9, fired  # 0.5 s after its last restart (by 1.2 s)
    finally:
        loop.close()
