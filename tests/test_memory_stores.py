"""The conformance suite and the state machine for the in-process stores and chains of them."""

from __future__ import annotations

from typing import Any

import pytest
from helpers_loopback import Bus, LoopbackChannel
from hypothesis import HealthCheck, settings

from stockpyle.stores import (
    BaseDictionaryStore,
    ChainedStore,
    ProcessMemoryStore,
    ThreadLocalStore,
)
from stockpyle.testing import (
    ExpiryConformance,
    FakeClock,
    KeyValueConformance,
    PolymorphismConformance,
    ReferenceConformance,
    StoreConformance,
    make_state_machine,
)

MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def memory(**kw: Any) -> ProcessMemoryStore:
    return ProcessMemoryStore(**kw)


def threadlocal(**kw: Any) -> ThreadLocalStore:
    return ThreadLocalStore(**kw)


def plain_dict(**kw: Any) -> BaseDictionaryStore:
    return BaseDictionaryStore({}, **kw)


def bounded_memory(**kw: Any) -> ProcessMemoryStore:
    return ProcessMemoryStore(max_entries=100_000, **kw)


def chain_memory_dict(**kw: Any) -> ChainedStore:
    return ChainedStore([ProcessMemoryStore(**kw), BaseDictionaryStore({}, **kw)])


def chain_three(**kw: Any) -> ChainedStore:
    return ChainedStore([ThreadLocalStore(**kw), ProcessMemoryStore(**kw), plain_dict(**kw)])


class GuardedChain(ChainedStore):
    """A chain whose memory layer an invalidation channel guards (a loopback one: the
    process's own writes are what it hears). Releasing it stops the channel, so that no
    listener thread outlives a test."""

    def release(self) -> None:
        super().release()
        if self.invalidation is not None:
            self.invalidation.stop()


def chain_guarded(**kw: Any) -> ChainedStore:
    channel = LoopbackChannel(Bus()).start()
    assert channel.wait_listening(5)
    return GuardedChain(
        [ProcessMemoryStore(**kw), BaseDictionaryStore({}, **kw)], invalidation=channel
    )


FACTORIES = {
    "memory": memory,
    "bounded_memory": bounded_memory,
    "threadlocal": threadlocal,
    "dict": plain_dict,
    "chain[memory,dict]": chain_memory_dict,
    "chain[threadlocal,memory,dict]": chain_three,
}


class _AllConformance(
    StoreConformance, ExpiryConformance, PolymorphismConformance, KeyValueConformance
):
    factory: Any

    @pytest.fixture
    def make_store(self, clock: FakeClock) -> Any:
        def make(**kw: Any) -> Any:
            return type(self).factory(clock=clock, **kw)

        return make


class TestProcessMemoryStore(_AllConformance, ReferenceConformance):
    factory = staticmethod(memory)


class TestBoundedProcessMemoryStore(_AllConformance, ReferenceConformance):
    factory = staticmethod(bounded_memory)


class TestThreadLocalStore(_AllConformance, ReferenceConformance):
    factory = staticmethod(threadlocal)


class TestDictionaryStore(_AllConformance, ReferenceConformance):
    factory = staticmethod(plain_dict)


class TestChainMemoryDict(_AllConformance):
    factory = staticmethod(chain_memory_dict)


class TestChainThree(_AllConformance):
    factory = staticmethod(chain_three)


class TestChainGuarded(_AllConformance):
    """A chain with an invalidation channel: its put does not write the guarded memory layer
    (the publish evicts it), its reads fill it under the channel's fence."""

    factory = staticmethod(chain_guarded)

    @pytest.fixture
    def make_store(self, clock: FakeClock) -> Any:
        made: list[Any] = []

        def make(**kw: Any) -> Any:
            made.append(chain_guarded(clock=clock, **kw))
            return made[-1]

        yield make
        for store in made:
            store.release()


def machine(factory: Any) -> Any:
    """The state machine's TestCase for ``factory``, with this module's settings."""
    case = make_state_machine(factory).TestCase
    case.settings = MACHINE_SETTINGS
    return case


TestMemoryMachine = machine(memory)
TestThreadLocalMachine = machine(threadlocal)
TestDictMachine = machine(plain_dict)
TestChainMachine = machine(chain_memory_dict)
TestChainThreeMachine = machine(chain_three)
TestLockstepMachine = machine(FACTORIES)
