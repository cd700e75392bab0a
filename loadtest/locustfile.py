"""Locust load test of an rmqd broker through the rmqd SDK (issue 8). How to run: loadtest/README.md.

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 60s AsyncProducerUser PushConsumerUser
    RMQD_NAMESRV=127.0.0.1:9876 RMQD_RATE=1000 locust -f loadtest/locustfile.py     # web UI on :8089

The users live in loadtest/zmq_user.py (which re-executes locust without gevent's monkey patching:
the SDK uses real threads and blocking pyzmq calls). Pick a scenario by naming user classes on the
command line (or with the web UI's --class-picker), or by tags: --tags produce | consume | sync |
async | batch | ordered | push | lite-pull. Without either, every user class runs with equal weight.
Settings: `locust -f loadtest/locustfile.py --help` lists the --rmqd-* options (RMQD_* variables).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.zmq_user import (  # noqa: E402, F401 - locust collects the User classes of this module
    AsyncProducerUser,
    BatchProducerUser,
    LitePullConsumerUser,
    OrderedProducerUser,
    PushConsumerUser,
    SyncProducerUser,
)
