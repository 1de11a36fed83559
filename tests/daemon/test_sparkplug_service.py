"""The real daemon, real corpus speech, real Whisper weights: the finals a Sparkplug host reads
are the finals on the JSON topics, and the node keeps the specification's rules throughout."""

from __future__ import annotations

import signal

from tests.fixtures.daemon import finals, run_once, start_daemon, write_config
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixture)
from tests.fixtures.mosquitto import Subscriber, mosquitto  # noqa: F401  (fixture)
from tests.fixtures.sparkplug_host import SparkplugHost, value_of


def test_sparkplug_finals_equal_the_json_finals(tmp_path, mosquitto, tiny_en_package, corpus):
    json_tree = Subscriber(mosquitto.port, ["edgescribe/test-press/#"]).connect()
    host = SparkplugHost(mosquitto.port, "plant").connect()
    lj = corpus / "en" / "lj_LJ001-0002.wav"
    config = write_config(
        tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state",
        corpus / "en" / "jfk_inaugural_1961.wav", speed=2.0,
        more_streams=f"  - name: desk\n    file: {lj}\n    speed: 2.0\n",
        extra="sparkplug:\n  enabled: true\n  group_id: plant\n")
    stderr = run_once(config, timeout=180)

    messages = json_tree.until_stopped()
    assert host.wait_for(lambda h: h.count("NDEATH") == 1, 10), host.kinds()
    host.disconnect()
    host.check()

    for stream in ("press", "desk"):
        on_json = [p["text"] for p in finals(messages) if p["stream"] == stream]
        assert on_json, f"no final for {stream}:\n{stderr}"
        assert host.finals(stream) == on_json
        ids = [p.value for p in host.values("Transcript/Utterance ID", stream)]
        assert ids == [p["utterance_id"] for p in finals(messages) if p["stream"] == stream]
    kinds = host.kinds("test-press")
    assert kinds[0] == "NBIRTH" and set(kinds[1:3]) == {"DBIRTH/press", "DBIRTH/desk"}
    assert kinds[-1] == "NDEATH"
    birth_model = [value_of(m) for m in host.messages[0].payload.metrics if m.name == "Properties/Model"]
    assert birth_model in (["tiny.en"], [None])
    assert "tiny.en" in [p.value for p in host.values("Properties/Model")]


def test_sigkill_of_the_daemon_leaves_ndeath_with_the_births_bdseq(tmp_path, mosquitto, tiny_en_package, corpus):
    host = SparkplugHost(mosquitto.port, "plant").connect()
    config = write_config(tmp_path / "config.yaml", tiny_en_package.dir, mosquitto.port, tmp_path / "state",
                          corpus / "en" / "jfk_inaugural_1961.wav", speed=0.5,
                          extra="sparkplug:\n  enabled: true\n  group_id: plant\n  edge_node_id: press-edge\n")
    daemon = start_daemon(config)
    try:
        assert host.wait_for(lambda h: "DBIRTH/press" in h.kinds("press-edge"), 60), host.kinds()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        assert host.wait_for(lambda h: h.count("NDEATH") == 1, 15), host.kinds()
    finally:
        daemon.kill()
        daemon.communicate()
    births = [value_of(m) for o in host.messages if o.kind == "NBIRTH" for m in o.payload.metrics if m.name == "bdSeq"]
    deaths = [value_of(m) for o in host.messages if o.kind == "NDEATH" for m in o.payload.metrics if m.name == "bdSeq"]
    assert births == deaths == [0]
    assert not host.alive("press-edge")
    host.disconnect()
    host.check()
