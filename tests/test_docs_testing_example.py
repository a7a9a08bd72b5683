"""The worked example of docs/testing.md, verbatim: it must keep passing as written."""

# --- begin example ---
import trioflow as tf
from hypothesis import HealthCheck, given, settings
from trioflow.testing import ScriptedJob, explore_crashes, raises, returns, run
from trioflow.testing.strategies import GeneratedWorkflow, workflows

checkout = (tf.workflow("checkout")
            .task("reserve", job="reserve", compensate="release")
            .task("charge", job="charge", compensate="refund",
                  retry=tf.Retry(max_attempts=3, interval=2.0), timeout=10.0)
            .task("ship", job="ship")
            .build())


async def test_a_flaky_charge_is_retried_on_virtual_time(trioflow_engine: tf.Engine) -> None:
    charge = ScriptedJob(raises(ConnectionError, times=2), returns({"charge_id": "ch-1"}))
    for name, job in {"reserve": ScriptedJob(returns("r-1")), "release": ScriptedJob(),
                      "charge": charge, "refund": ScriptedJob(), "ship": ScriptedJob(returns("shipped"))}.items():
        trioflow_engine.jobs.register(name, job)
    trioflow_engine.register(checkout)
    instance = await trioflow_engine.wait(await trioflow_engine.start("checkout", {"order": 7}))
    assert instance.status == "completed" and instance.step_results["charge"].attempts == 3
    assert [c.time - charge.calls[0].time for c in charge.calls] == [0.0, 2.0, 6.0]  # 2 s, then 4 s


async def test_a_declined_charge_releases_the_reservation(trioflow_engine: tf.Engine) -> None:
    release = ScriptedJob()
    for name, job in {"reserve": ScriptedJob(returns("r-1")), "release": release,
                      "charge": ScriptedJob(raises(PermissionError)), "refund": ScriptedJob(),
                      "ship": ScriptedJob()}.items():
        trioflow_engine.jobs.register(name, job)
    trioflow_engine.register(checkout)
    instance = await trioflow_engine.wait(await trioflow_engine.start("checkout", {"order": 8}))
    assert instance.status == "failed" and instance.compensated_steps == ("reserve",)
    assert [c.args for c in release.calls] == [("r-1",)]


def test_checkout_survives_a_crash_at_every_write() -> None:
    jobs = {"reserve": ScriptedJob(returns("r-1")), "release": ScriptedJob(),
            "charge": ScriptedJob(raises(ConnectionError), returns("ch-1")), "refund": ScriptedJob(),
            "ship": ScriptedJob(returns("shipped"))}

    async def main() -> None:
        report = await explore_crashes(checkout, {"order": 9}, jobs=jobs)
        assert report.baseline.status == "completed" and len(report.points) == 2 * report.writes

    run(main)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows())
def test_generated_workflows_end_as_their_faults_say(gen: GeneratedWorkflow) -> None:
    async def main() -> tf.WorkflowInstance:
        async with tf.testing.open_test_engine() as engine:
            for name, job in gen.jobs.items():
                engine.jobs.register(name, job)
            engine.register(gen.definition)
            return await engine.wait(await engine.start("generated", gen.input))

    assert run(main).status == gen.expected_status()
# --- end example ---
