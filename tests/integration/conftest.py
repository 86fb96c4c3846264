"""Session fixtures: real guardserve servers with the embedded model, one per configuration."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
from live_server import API_KEY, Server
from transformers import AutoTokenizer, PreTrainedTokenizerBase


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[[Server], Server]]:
    """Starts servers on demand and stops every one of them when the session ends."""
    started: list[Server] = []

    def start(server: Server) -> Server:
        started.append(server)
        server.start()
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def torch_server(start_server: Callable[[Server], Server]) -> Server:
    """Plain and guarded requests both on the torch runner."""
    return start_server(Server("torch", "torch", []))


@pytest.fixture(scope="session")
def vllm_server(start_server: Callable[[Server], Server]) -> Server:
    """Plain requests on embedded vLLM, guarded ones on the torch runner."""
    pytest.importorskip("vllm")
    # 512 tokens x 16 sequences need ~380 MiB of fp32 KV for the default model.
    return start_server(Server("vllm", "vllm", ["--kv-cache-memory-bytes", str(512 << 20)]))


@pytest.fixture(scope="session")
def auth_server(start_server: Callable[[Server], Server]) -> Server:
    """A torch server that wants a Bearer key on /v1/*."""
    return start_server(Server("auth", "torch", ["--max-num-seqs", "4"], api_key=API_KEY))


@pytest.fixture(scope="session")
def guard_default_server(start_server: Callable[[Server], Server]) -> Server:
    """A torch server that guards every request unless told otherwise."""
    return start_server(Server("guard-default", "torch", ["--guard-default", "on"]))


@pytest.fixture(params=["torch", pytest.param("vllm", marks=pytest.mark.vllm)])
def server(request: pytest.FixtureRequest) -> Server:
    """Each engine's session server in turn (the servers themselves live all session)."""
    return request.getfixturevalue(f"{request.param}_server")


@functools.cache
def load_tokenizer(root: str) -> PreTrainedTokenizerBase:
    """A model folder's tokenizer, loaded once per session."""
    return AutoTokenizer.from_pretrained(root)


@pytest.fixture
def tokenizer(server: Server) -> PreTrainedTokenizerBase:
    """The served model's tokenizer, from the folder GET /v1/models names as root."""
    with server.http() as client:
        root = client.get("/v1/models").json()["data"][0]["root"]
    return load_tokenizer(root)
