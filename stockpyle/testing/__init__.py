"""Test tools shipped with stockpyle, so that any store (yours too) is held to one contract.

* :class:`StoreConformance` and its companion mixins: the example-based conformance suite.
* :func:`make_state_machine`: a hypothesis state machine checking stores against a model;
  :func:`register_state_machines` binds such machines as test cases, fixtures handed over.
* :class:`FakeClock`: the injectable clock expiry tests use instead of sleeping.

Needs ``pytest``, ``hypothesis`` and ``attrs`` (``pip install 'stockpyle[testing]'``).
"""

from stockpyle.testing.clock import FakeClock
from stockpyle.testing.conformance import (
    ExpiryConformance,
    KeyValueConformance,
    MakeStore,
    PolymorphismConformance,
    ReferenceConformance,
    StoreConformance,
)
from stockpyle.testing.kit import DEFAULT_KIT, ModelKit
from stockpyle.testing.machines import register_state_machines
from stockpyle.testing.stateful import LIFETIMES, ReferenceModel, make_state_machine

__all__ = [
    "DEFAULT_KIT",
    "LIFETIMES",
    "ExpiryConformance",
    "FakeClock",
    "KeyValueConformance",
    "MakeStore",
    "ModelKit",
    "PolymorphismConformance",
    "ReferenceConformance",
    "ReferenceModel",
    "StoreConformance",
    "make_state_machine",
    "register_state_machines",
]
