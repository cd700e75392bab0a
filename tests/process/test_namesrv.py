"""The namesrv as a real OS process: registration, routes, expiry, garbage input, graceful SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import zmq

from rmqd.client._remoting import RemotingClient
from rmqd.errors import RemotingConnectError, RemotingTimeoutError
from rmqd.protocol import (
    RequestCode,
    ResponseCode,
    decode,
    decode_json_body,
    encode_json_body,
    encode_request,
)
from tests.helpers import free_port, kill_pids, wait_until

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPIC_CONFIG = {"Orders": {"topicName": "Orders", "readQueueNums": 4, "writeQueueNums": 4, "perm": 6,
                           "topicFilterType": "SINGLE_TAG", "topicSysFlag": 0, "order": False}}


@pytest.fixture
def namesrv(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "namesrv.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.namesrv", "--listen", addr, "--scan-interval-ms", "100",
             "--broker-expiry-ms", "1500"],
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )
    client = RemotingClient()
    try:
        wait_until(lambda: _answers(client, addr), 15, "the namesrv to answer")
        yield proc, addr, client, log_path
    finally:
        client.close()
        kill_pids([proc.pid])
        proc.wait(10)


def _answers(client: RemotingClient, addr: str) -> bool:
    try:
        client.invoke(addr, RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER, timeout_ms=300)
    except (RemotingTimeoutError, RemotingConnectError):  # still starting: no answer, or not listening
        return False
    return True


def _register(client: RemotingClient, addr: str, broker_name: str = "broker-a", port: int = 10911):
    fields = {"clusterName": "DefaultCluster", "brokerAddr": f"127.0.0.1:{port}", "brokerName": broker_name,
              "brokerId": 0, "haServerAddr": ""}
    body = encode_json_body({"topicConfigTable": TOPIC_CONFIG})
    return client.invoke(addr, RequestCode.REGISTER_BROKER, fields, body)


def _route(client: RemotingClient, addr: str, topic: str = "Orders"):
    return client.invoke(addr, RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": topic})


def _raw_exchange(addr: str, frame: bytes, expect_reply: bool) -> bytes | None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{addr}")
        sock.send(frame)
        if not expect_reply:
            return None
        assert sock.poll(5000), "no reply from the namesrv"
        return sock.recv()
    finally:
        sock.close(0)


def test_registered_broker_appears_in_the_route_and_cluster_info(namesrv):
    # Given a running namesrv
    _proc, addr, client, _log = namesrv
    # When a broker registers with one topic
    assert _register(client, addr).code == ResponseCode.SUCCESS
    # Then the topic's route names the broker and its queues
    route = decode_json_body(_route(client, addr).body)
    assert route["brokerDatas"] == [{"cluster": "DefaultCluster", "brokerName": "broker-a",
                                     "brokerAddrs": {"0": "127.0.0.1:10911"}}]
    assert route["queueDatas"][0]["writeQueueNums"] == 4
    cluster = decode_json_body(client.invoke(addr, RequestCode.GET_BROKER_CLUSTER_INFO).body)
    assert cluster["clusterAddrTable"] == {"DefaultCluster": ["broker-a"]}
    topics = decode_json_body(client.invoke(addr, RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER).body)
    assert topics["topicList"] == ["Orders"]


def test_unknown_topic_answers_topic_not_exist(namesrv):
    _proc, addr, client, _log = namesrv
    response = _route(client, addr, "Nope")
    assert response.code == ResponseCode.TOPIC_NOT_EXIST and "Nope" in response.remark


def test_wipe_write_perm_survives_the_brokers_next_registration(namesrv):
    # Given a registered broker
    _proc, addr, client, _log = namesrv
    _register(client, addr)
    # When its write permission is wiped and it re-registers the same topics
    wiped = client.invoke(addr, RequestCode.WIPE_WRITE_PERM_OF_BROKER, {"brokerName": "broker-a"})
    _register(client, addr)
    # Then the route stays read-only until write permission is added back
    assert wiped.fields["wipeTopicCount"] == 1
    assert decode_json_body(_route(client, addr).body)["queueDatas"][0]["perm"] == 4
    client.invoke(addr, RequestCode.ADD_WRITE_PERM_OF_BROKER, {"brokerName": "broker-a"})
    assert decode_json_body(_route(client, addr).body)["queueDatas"][0]["perm"] == 6


def test_a_silent_broker_expires_and_its_route_disappears(namesrv):
    # Given a broker that registers once and then stays silent (expiry 1.5 s, scan every 100 ms)
    _proc, addr, client, _log = namesrv
    _register(client, addr)
    assert _route(client, addr).code == ResponseCode.SUCCESS
    # Then its route disappears after the expiry
    wait_until(lambda: _route(client, addr).code == ResponseCode.TOPIC_NOT_EXIST, 10, "the broker to expire")


def test_garbage_never_stops_the_namesrv(namesrv):
    # Given a running namesrv with a registered broker
    proc, addr, client, log_path = namesrv
    _register(client, addr)
    # When it receives random bytes, a wrong version, an unknown code, bad fields and an oversized frame
    _raw_exchange(addr, os.urandom(64), expect_reply=False)
    header = b'{"code":105,"opaque":77,"fields":{}}'
    wrong_version = b"RQ\x09\x00" + len(header).to_bytes(4, "big") + header
    reply = decode(_raw_exchange(addr, wrong_version, expect_reply=True))
    unknown = decode(_raw_exchange(addr, encode_request(99999, 5), expect_reply=True))
    bad_fields = decode(_raw_exchange(addr, encode_request(RequestCode.REGISTER_BROKER, 6, {"brokerId": "x"}),
                                      expect_reply=True))
    _raw_exchange(addr, b"\x00" * (17 * 1024 * 1024), expect_reply=False)
    # Then each answerable frame got a clear error, and the process still serves routes
    assert (reply.code, reply.opaque) == (ResponseCode.VERSION_NOT_SUPPORTED, 77)
    assert unknown.code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED and "99999" in unknown.remark
    assert bad_fields.code == ResponseCode.INVALID_PARAMETER
    assert _route(client, addr).code == ResponseCode.SUCCESS
    assert proc.poll() is None
    assert "malformed frame" in log_path.read_text()


def test_sigterm_stops_the_namesrv_with_exit_code_zero_and_logs_name_and_pid(namesrv):
    proc, _addr, _client, log_path = namesrv
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    text = log_path.read_text()
    assert f"namesrv[{proc.pid}] INFO namesrv listening on" in text
    assert "namesrv stopped" in text
