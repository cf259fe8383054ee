"""Both engines implement the one engine interface (`lakeimg.engine.base.Engine`), with the
same parameters, so a job written against it runs on either."""

from __future__ import annotations

import inspect

import pytest

from lakeimg.engine.base import Engine, Staged
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.spark import SparkEngine, SparkStaged
from lakeimg.engine.staged import LocalStaged


def _methods(protocol: type) -> list[str]:
    return sorted(n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_"))


@pytest.mark.parametrize("protocol, implementations", [(Engine, (LocalEngine, SparkEngine)), (Staged, (LocalStaged, SparkStaged))])
def test_every_engine_implements_the_interface(protocol, implementations):
    methods = _methods(protocol)
    assert len(methods) >= 4
    for implementation in implementations:
        for name in methods:
            wanted = inspect.signature(getattr(protocol, name))
            got = inspect.signature(getattr(implementation, name))
            # the interface's parameters, in order; an engine may take more optional keywords
            assert [p for p in got.parameters if p in wanted.parameters] == list(wanted.parameters), (implementation.__name__, name)
            extra = [p for n, p in got.parameters.items() if n not in wanted.parameters]
            assert all(p.default is not inspect.Parameter.empty for p in extra), (implementation.__name__, name)
