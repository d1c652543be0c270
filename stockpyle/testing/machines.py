"""Registering state machines as test cases, with pytest fixtures handed to their factories.

``register_state_machines(globals(), {"TestMyStore": my_factory})`` binds one test case per
entry under exactly that name, and nothing else: no loop variable or second name for pytest to
collect twice. A factory asks for pytest fixtures by naming them as parameters, as a test
function does; the test case requests those fixtures and hands their values over for the run
(no module global carries a server or a directory from a fixture to the machine)::

    def my_factory(memcached_server, **kw):
        return MemcacheStore(servers=[memcached_server], **kw)

    register_state_machines(globals(), {"TestMyStoreMachine": my_factory})

Parameters ``clock``, ``lifetime_cb`` and ``polymorphic`` (see :func:`make_state_machine`) and
``**kw`` are not fixtures.
"""

from __future__ import annotations

import inspect
import unittest
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as Settings
from hypothesis.stateful import run_state_machine_as_test

from stockpyle.testing.stateful import StoreFactory, make_state_machine

__all__ = ["register_state_machines"]

_MACHINE_ARGUMENTS = frozenset({"clock", "lifetime_cb", "polymorphic"})
_DEFAULT_SETTINGS = Settings(deadline=None, suppress_health_check=list(HealthCheck))


def _fixtures_of(factory: Callable[..., Any]) -> tuple[str, ...]:
    """The pytest fixtures ``factory`` asks for: its named parameters other than the ones
    :func:`make_state_machine` passes."""
    return tuple(
        name
        for name, p in inspect.signature(factory).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in _MACHINE_ARGUMENTS
    )


def _bind(factory: StoreFactory, values: Mapping[str, Any]) -> StoreFactory:
    wanted = {name: values[name] for name in _fixtures_of(factory)}
    if not wanted:
        return factory
    return lambda **kw: factory(**wanted, **kw)


def _test_case(
    name: str,
    module: str,
    factory: StoreFactory | Mapping[str, StoreFactory],
    settings: Settings | None,
    options: Mapping[str, Any],
) -> type[unittest.TestCase]:
    factories = dict(factory) if isinstance(factory, Mapping) else {"": factory}
    needed = sorted({f for make in factories.values() for f in _fixtures_of(make)})

    class Case(unittest.TestCase):
        __doc__ = f"The stores of {name} checked against the reference model, step by step."

        _fixture_values: dict[str, Any] = {}  # noqa: RUF012 (replaced per test, never mutated)

        @pytest.fixture(autouse=True)
        def _hand_over_fixtures(self, request: pytest.FixtureRequest) -> None:
            self._fixture_values = {f: request.getfixturevalue(f) for f in needed}

        def runTest(self) -> None:
            bound = {key: _bind(make, self._fixture_values) for key, make in factories.items()}
            machine = make_state_machine(bound.get("", bound), **options)
            run_state_machine_as_test(machine, settings=getattr(self, "settings", None))

        runTest.is_hypothesis_test = True  # type: ignore[attr-defined]

    Case.settings = settings if settings is not None else _DEFAULT_SETTINGS  # type: ignore[attr-defined]
    Case.__name__ = Case.__qualname__ = name
    Case.__module__ = module
    return Case


def register_state_machines(
    namespace: MutableMapping[str, Any],
    machines: Mapping[str, StoreFactory | Mapping[str, StoreFactory]],
    *,
    settings: Settings | None = None,
    **options: Any,
) -> None:
    """Bind, in ``namespace`` (a test module's ``globals()``), one state-machine test case per
    entry of ``machines``, under the entry's name (which must not be bound yet).

    A value is a store factory, or a mapping of factories driven in lockstep; factories name
    the fixtures they need as parameters (see the module docstring). ``settings`` are the
    hypothesis settings of every case; ``options`` go to :func:`make_state_machine`
    (``kit``, ``expiry``, ``polymorphic``).
    """
    module = str(namespace.get("__name__", __name__))
    for name, factory in machines.items():
        if name in namespace:
            msg = f"{name!r} is already bound in {module}: a test case would be collected twice"
            raise ValueError(msg)
        namespace[name] = _test_case(name, module, factory, settings, options)
