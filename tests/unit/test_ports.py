"""Free ports: a port handed out once is never handed out again by the same process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from cxmesh_server.stack import ports


class KernelGivingTheSamePortTwice:
    """A socket whose kernel answers bind(0) with 41000, 41000, then 41001."""

    answers: Iterator[int]

    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> KernelGivingTheSamePortTwice:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self.answers)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_offers_again_is_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    KernelGivingTheSamePortTwice.answers = iter([41000, 41000, 41001])
    monkeypatch.setattr(ports, "_handed_out", set())
    monkeypatch.setattr(socket, "socket", KernelGivingTheSamePortTwice)
    assert [ports.free_port(), ports.free_port()] == [41000, 41001]


def test_free_ports_are_really_free() -> None:
    port = ports.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert ports.is_listening("127.0.0.1", port)
