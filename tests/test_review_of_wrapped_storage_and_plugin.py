"""An adversarial review of c4b8a72 and 05951a9 (naive datetimes, MapError parts, adapters
without signals, MemoryAdapter wake_at, the conformance kit's due(), the pytest plugin and
explore_crashes' switches): those held. The tests below failed until the commit that added
this file: the crash explorer's storage wrapper hides what the storage it wraps has not (so the
engine refuses, or does without, as on that storage), and the plugin finds pytest-trio loaded
by its module's name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.adapters import MemoryAdapter
from trioflow.testing import explore_crashes


class _Without:
    """A user's adapter that hands every call over to a MemoryAdapter (``__getattr__``) but has
    none of the methods named in ``lacks``: one written before those methods existed."""

    def __init__(self, lacks: tuple[str, ...]) -> None:
        self._inner = MemoryAdapter()
        self._lacks = frozenset(lacks)

    def __getattr__(self, name: str) -> Any:
        if name in self._lacks:
            raise AttributeError(name)
        return getattr(self._inner, name)


async def _ok(data: Any) -> Any:
    return 1


async def test_explore_crashes_refuses_a_receive_workflow_on_an_adapter_without_signals_clearly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Promise (docs/adapters.md, send_signal/signals row, added by 05951a9): "an adapter without
    them still works for workflows with neither receive nor child steps: `register()` refuses
    those with `InvalidArgumentError`, and `signal()` raises `StorageError`, storing nothing"
    (docs/waiting.md says the same). docs/testing.md: `explore_crashes(..., adapter_factory=)`
    runs the workflow on that storage; its mistakes are refused "with `InvalidArgumentError`
    or `DefinitionError` naming the mistake".

    Reproduction: an adapter that delegates to a MemoryAdapter but has no ``send_signal`` and
    ``signals``; ``explore_crashes(workflow with a receive step, signals=[("go", 1)],
    adapter_factory=lambda: that adapter)``.
    Expected: ``InvalidArgumentError`` (as ``engine.register`` raises on that adapter, naming
    the receive step), or at least a ``TrioflowError``.
    Was: a bare ``AttributeError: send_signal`` from deep inside ``engine.signal``: the kit's
    ``_CrashingAdapter`` (runtime/testing/_crashes.py:859-873) always defines ``send_signal``
    and ``signals``, so ``stores_signals`` says yes and register() lets the workflow in."""
    wf = tf.workflow("r").step("a", _ok).receive("go", signal="go").build()
    with pytest.raises(tf.TrioflowError):
        await explore_crashes(wf, None, adapter_factory=lambda: _Without(("send_signal", "signals")),  # type: ignore[arg-type]
                              signals=[("go", 1)])


async def test_explore_crashes_runs_on_an_adapter_written_before_waiting_instances(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Promise (docs/waiting.md, For adapter authors): "An adapter written before waiting
    instances existed (without `due()` and `next_wake()`) still works: instances then wait in
    memory, holding their task"; docs/testing.md: `explore_crashes(..., adapter_factory=)` runs
    the workflow on the storage `adapter_factory()` gives (any adapter an engine takes).

    Reproduction: an adapter that delegates to a MemoryAdapter but has no ``due`` and
    ``next_wake`` (nor signals); ``explore_crashes`` of a plain two-step workflow on it.
    Expected: a report with no divergence (an engine opened on that adapter runs the workflow).
    Was: ``AttributeError: next_wake``: the kit's ``_CrashingAdapter`` defines ``due`` and
    ``next_wake`` unconditionally (runtime/testing/_crashes.py:888-899), so the engine starts
    its waker on it (runtime/_engine.py:2414 looks at the wrapper) and the call reaches an
    adapter that lacks them."""
    wf = tf.workflow("plain").step("a", _ok).step("b", _ok).build()
    report = await explore_crashes(wf, None,
                                   adapter_factory=lambda: _Without(("due", "next_wake", "send_signal", "signals")))  # type: ignore[arg-type]
    assert not report.divergent


_TEST_MODULE = textwrap.dedent('''
    import trioflow as tf

    async def ok(data):
        return 1

    async def test_engine(trioflow_engine):
        trioflow_engine.register(tf.workflow("w").step("s", ok).build())
        iid = await trioflow_engine.start("w")
        assert (await trioflow_engine.wait(iid)).status == "completed"
''')


def test_trioflow_engine_fixture_works_with_pytest_trio_loaded_by_its_module_name(tmp_path: Path) -> None:
    """Promise (docs/testing.md): "`trioflow_engine` pytest fixture | that engine, registered
    through a pytest plugin entry point (installing trioflow is enough; needs pytest-trio).
    Tests that use it run on the mock clock without asking for a clock."

    Reproduction: a project that loads its plugins itself (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``,
    common in CI) with ``pytest_plugins = ["pytest_trio.plugin"]`` in its conftest.py and
    ``-p trioflow``; an ``async def`` test using ``trioflow_engine``.
    Expected: the test passes (pytest-trio is installed and loaded).
    Was: the test errored at set-up with "the trioflow_engine fixture needs pytest-trio;
    install trioflow's testing extra: pip install 'trioflow[testing]'": the plugin asks
    ``pluginmanager.hasplugin("trio")`` (runtime/testing/_pytest_plugin.py:44 and :60), the
    name only pytest-trio's entry point gives it; loaded by module it is registered as
    ``pytest_trio.plugin``. (``-p pytest_trio.plugin`` fails the same way.)"""
    (tmp_path / "test_x.py").write_text(_TEST_MODULE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["pytest_trio.plugin"]\n')
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "trioflow", "--strict-markers",
         "test_x.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
