"""What a test gets when it uses the ``trioflow_engine`` fixture wrongly: a message naming the
mistake in the user's own words (the fixture, the option), not pytest-trio's about a marker
the user never wrote, nor open_test_engine's about options the user passed through a fixture."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_a_plain_def_test_asking_for_the_engine_is_told_to_be_async(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_sync(trioflow_engine):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_sync uses the trioflow_engine fixture, which is async: define it with"
                                 " `async def`*"])
    result.stdout.no_fnmatch_line("*is marked trio but is not async*")


def test_a_hypothesis_test_asking_for_the_engine_is_told_to_open_one_per_example(pytester: pytest.Pytester) -> None:
    """Told not to check for function-scoped fixtures, hypothesis would share one engine across
    examples, and pytest-trio would run the test on trio's own clock: NotOnMockClockError, whose
    message points back at this very fixture."""
    pytester.makepyfile("""
        from hypothesis import HealthCheck, given, settings, strategies as st

        @settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.integers())
        async def test_drawn(trioflow_engine, n):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_drawn uses the trioflow_engine fixture under hypothesis's @given:*"
                                 " open one per example with trioflow.testing.open_test_engine inside"
                                 " trioflow.testing.run()"])
    result.stdout.no_fnmatch_line("*NotOnMockClockError*")


def test_a_misspelt_option_in_the_options_fixture_names_that_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def trioflow_engine_options():
            return {"max_runing": 3}

        async def test_misspelt(trioflow_engine):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)  # at set-up, before the test runs
    result.stdout.fnmatch_lines(["*the trioflow_engine_options fixture: no option 'max_runing'; it takes"
                                 " open_engine's: adapter, max_running*"])
