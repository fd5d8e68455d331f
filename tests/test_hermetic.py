"""The suite's own guarantees: no network from any process it starts, no silent skips in CI, isolated homes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHROMIUM, HERMETIC, netguard

ROOT = Path(__file__).resolve().parent.parent
ELSEWHERE = ("192.0.2.1", 9)  # TEST-NET-1: an address no machine has; the guard must stop it before the kernel


def test_a_connection_to_another_machine_is_refused_and_logged(network_log):
    with pytest.raises(netguard.NetworkBlocked, match="allows no network"):
        socket.create_connection(ELSEWHERE, timeout=1)
    with pytest.raises(OSError), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.connect(("2001:db8::1", 443))
    with pytest.raises(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"x", ELSEWHERE)
    log = network_log()
    assert log.count("192.0.2.1") == 2 and "2001:db8::1" in log and "test_hermetic.py" in log  # with its stack


def test_a_lookup_of_a_public_name_is_refused_and_logged(network_log):
    with pytest.raises(socket.gaierror, match="allows no network"):
        socket.getaddrinfo("huggingface.co", 443)
    assert "huggingface.co" in network_log()


def test_loopback_and_unix_sockets_still_work(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            peer, _ = server.accept()
            client.sendall(b"ping")
            assert peer.recv(4) == b"ping"
            peer.close()
    assert socket.getaddrinfo("localhost", 80)
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)


def test_every_python_the_tests_start_is_guarded_too(network_log):
    code = "import socket; socket.create_connection(('192.0.2.1', 9), timeout=1)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "NetworkBlocked" in result.stderr, result.stderr
    log = network_log()
    assert "(-c): connect to ('192.0.2.1', 9)" in log  # logged by the child, whose argv is ['-c']
    assert str(HERMETIC) in os.environ["PYTHONPATH"].split(os.pathsep)


def test_no_analytics_and_a_hugging_face_home_of_the_suites_own():
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    home = Path(os.environ["HF_HOME"])
    assert home != Path.home() / ".cache" / "huggingface" and "recommender-tests-" in str(home)
    assert os.environ["DDGS_PROXY"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_the_app_server_runs_guarded_without_analytics_and_its_own_hf_home(app_server):
    env = dict(
        line.split("=", 1)
        for line in Path(f"/proc/{app_server.process.pid}/environ").read_text().split("\0")
        if "=" in line
    )
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False" and env["HF_HOME"] == str(app_server.folder / "hf")
    assert str(HERMETIC) in env["PYTHONPATH"].split(os.pathsep) and env["RECOMMENDER_TEST_NETLOG"]


def test_probe_that_skips_when_asked():
    """A skip for the test below to run in a pytest of its own; in a normal run it has nothing to skip."""
    if os.environ.get("RECOMMENDER_TEST_PROBE"):
        pytest.skip("the probe skips on purpose")


@pytest.mark.parametrize("ci", ["", "1"])
def test_in_ci_a_skip_is_a_failure_elsewhere_a_skip_with_its_reason(ci):
    probe = f"{Path(__file__).name}::test_probe_that_skips_when_asked"
    env = {**os.environ, "CI": ci, "RECOMMENDER_TEST_PROBE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", probe]
    result = subprocess.run(command, cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=300)
    if ci:
        assert result.returncode == 1 and "skipped in CI" in result.stdout and "1 failed" in result.stdout
    else:
        assert result.returncode == 0 and "SKIPPED" in result.stdout and "the probe skips on purpose" in result.stdout


def test_ci_installs_the_chromium_the_tests_use():
    script = (ROOT / ".ci" / "run").read_text()
    assert f"[ -x {CHROMIUM} ]" in script and 'export CI="${CI:-1}"' in script
