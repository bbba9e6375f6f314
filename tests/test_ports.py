"""Ports for the suite's servers (scripts/localservers.free_port): under pytest-xdist each worker
draws from a slice of its own, so two tests running at once are never handed the same port."""

from __future__ import annotations

from scripts import localservers


def test_each_xdist_worker_draws_ports_from_a_slice_of_its_own(monkeypatch):
    slices = []
    for n in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(localservers._my_slice(10_000, 32_767))
        low, high = slices[-1]
        assert all(low <= localservers.free_port() <= high for _ in range(20))
    for (_, high), (low, _) in zip(slices, slices[1:], strict=False):
        assert high < low  # disjoint, in order
    assert slices[0][0] == 10_000 and slices[-1][1] <= 32_767


def test_outside_xdist_the_whole_range_is_used(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert localservers._my_slice(10_000, 32_767) == (10_000, 32_767)
