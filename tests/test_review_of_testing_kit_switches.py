"""An adversarial review of the testing kit (docs/testing.md), as a user who property-tests their
own workflows: the strategies' oracles, explore_crashes and the docs' examples held. The tests
below failed until the commit that added this file (the plugin adds pytest-trio's marker only
when pytest-trio is there; explore_crashes checks its switches)."""

from __future__ import annotations

import pytest

import trioflow as tf
from trioflow.testing import ScriptedJob, explore_crashes, run

pytest_plugins = ["pytester"]


def test_the_engine_fixture_without_pytest_trio_under_strict_markers_fails_its_test_not_the_session(
        pytester: pytest.Pytester) -> None:
    """docs/testing.md: the ``trioflow_engine`` fixture is "registered through a pytest plugin entry
    point (installing trioflow is enough; needs pytest-trio)"; the plugin's own set-up hook is
    there to say, for a test that asks for it, "the trioflow_engine fixture needs pytest-trio;
    install trioflow's testing extra" (it does, without ``--strict-markers``).

    Reproduction: a project with ``addopts = --strict-markers`` (as this repository's own
    pyproject has) and without pytest-trio (``-p no:trio``), one test using the fixture and one
    unrelated plain test.

    Expected: the fixture's test fails at set-up with that message; the unrelated test passes.
    Actual: INTERNALERROR from the plugin's ``pytest_collection_modifyitems``
    (``pytest.mark.trio`` is an unknown marker under ``--strict-markers``): the whole session
    stops, no test runs, and the message about pytest-trio is never shown."""
    pytester.makeini("[pytest]\naddopts = --strict-markers\n")
    pytester.makepyfile("""
        async def test_uses_the_engine(trioflow_engine):
            pass

        def test_unrelated():
            assert True
    """)
    result = pytester.runpytest_subprocess("-p", "no:trio", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output, output[-1500:]
    result.assert_outcomes(passed=1, errors=1)
    assert "needs pytest-trio" in output


@pytest.mark.parametrize("switch", ["check", "lost_writes"])
def test_explore_crashes_refuses_a_switch_that_is_not_a_bool(switch: str) -> None:
    """docs/testing.md: ``explore_crashes(..., check=True, ..., lost_writes=True, ...)``;
    "``check=False``: only returns the report". Every other switch of the kit is checked
    (``workflows(loops=1)``, ``job_behaviours(may_hang=1)``, ``retry_policies(timing="no")``,
    ``open_engine(threads=...)`` all raise ``InvalidArgumentError``: "takes True or False"), and
    the docs list the mistakes ``explore_crashes`` refuses "with InvalidArgumentError ... naming
    the mistake".

    Reproduction: ``explore_crashes(wf, jobs=..., check="no")`` (or ``lost_writes="no"``; a
    value read from an environment variable is a string).

    Expected: ``InvalidArgumentError`` naming the switch, before any run.
    Actual: the string is taken as truthy: ``check="no"`` checks and raises on a divergence the
    caller asked not to be raised; ``lost_writes="no"`` explores lost writes too."""
    wf = tf.workflow("w").task("a", job="a").build()

    async def main() -> None:
        await explore_crashes(wf, None, jobs={"a": ScriptedJob()}, **{switch: "no"})  # type: ignore[arg-type]

    with pytest.raises(tf.TrioflowError, match=switch):
        run(main)
