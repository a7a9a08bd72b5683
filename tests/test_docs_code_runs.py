"""The code README.md and docs/*.md show, run as a reader would run it, with what they say it
does checked: a first-time user copies these blocks before anything else.

Each block is read from the page at test time (a page edited without its code still running
fails here). README's first example runs verbatim as a program and must print what README says
it prints; the fragments (a workflow built from functions the page leaves to the reader, then
a few lines that use it) run with small stand-ins for those functions, their top-level
``await`` lines included, on a ``MockClock`` so that retries and day-long timers take no time.
The hosting example needs a web server and modules of the reader's own: it is only compiled,
and its trioflow names checked. docs/testing.md's examples are pinned by
test_docs_testing_example.py and test_docs_portal_example.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.testing import check_persistence_adapter, open_test_engine, run

ROOT = Path(__file__).resolve().parent.parent


def block(page: str, first_line: str) -> str:
    """The ``python`` block of ``page`` that starts with ``first_line``."""
    text = (ROOT / page).read_text()
    found = [code for code in re.findall(r"```python\n(.*?)```", text, re.S) if code.startswith(first_line)]
    assert len(found) == 1, f"{page} shows {len(found)} python blocks starting {first_line!r}, not one"
    return found[0]


async def run_fragment(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Runs ``code`` in ``namespace`` as a notebook cell would (top-level ``await`` allowed)."""
    compiled = compile(code, "<docs>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    pending = eval(compiled, namespace)  # a coroutine when the code awaits at top level
    if pending is not None:
        await pending
    return namespace


def test_readme_first_example_prints_what_readme_says(tmp_path: Path) -> None:
    code = block("README.md", "import trio, trioflow as tf\n\nasync def reserve(ctx):           print")
    printed = re.search(r"It prints:\n\n```\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert printed is not None
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed.group(1)
    assert (tmp_path / "orders.db").exists()  # where README says the instances live


def test_readme_hosting_example_compiles_and_names_what_trioflow_has() -> None:
    code = block("README.md", "import trio, trioflow as tf\nfrom hypercorn")
    tree = ast.parse(code)
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tf"}
    assert used and all(hasattr(tf, name) for name in used), used
    assert hasattr(tf.adapters, "SQLiteAdapter") and hasattr(tf.WorkflowInstance, "to_dict")


class Inventory:
    def __init__(self) -> None:
        self.released: list[str] = []

    async def reserve(self, items: list[str]) -> dict[str, Any]:
        return {"id": "res-1", "items": items}

    async def release(self, reservation_id: str) -> None:
        self.released.append(reservation_id)


class DecliningPayments:
    def __init__(self) -> None:
        self.charges = 0

    async def charge(self, total: int) -> dict[str, Any]:
        self.charges += 1
        raise PermissionError("card declined")

    async def refund(self, charge_id: str) -> None:
        raise AssertionError("nothing was charged")


def test_readme_execute_workflow_fragment_fails_and_compensates_as_its_comment_says() -> None:
    inventory, payments = Inventory(), DecliningPayments()
    namespace: dict[str, Any] = {"inventory": inventory, "payments": payments}

    async def main() -> None:
        await run_fragment(block("README.md", "import trio, trioflow as tf\n\nasync def reserve(ctx):            return"),
                           namespace)

    run(main)
    result = namespace["result"]
    assert (result.success, result.failed_step, result.compensated_steps) == (False, "charge", ("reserve",))
    assert (result.error_name, result.cause) == ("PermissionError", "card declined")  # "e.g." in README
    assert inventory.released == ["res-1"] and payments.charges == 3  # Retry(max_attempts=3)


def test_readme_state_machine_fragment_runs_an_order_to_complete(capsys: pytest.CaptureFixture[str]) -> None:
    code = block("README.md", "process_order = (tf.workflow(\"process-order\")")
    # "..." stands for the other jobs' registrations.
    code = code.replace("\n    ...\n", "\n    engine.jobs.register('create-shipment', create_shipment)"
                                      "\n    engine.jobs.register('send-confirmation', send_confirmation)"
                                      "\n    engine.jobs.register('create-backorder', create_backorder)\n")
    assert "..." not in code
    calls: list[str] = []

    async def validate_order(data: dict[str, Any]) -> dict[str, Any]:
        calls.append("validate")
        return {"order_id": data["order_id"], "in_stock": True}

    def job(name: str) -> Any:
        async def run_job(data: Any) -> str:
            calls.append(name)
            return name
        return run_job

    namespace: dict[str, Any] = {"tf": tf, "validate_order": validate_order}
    namespace.update((name, job(name)) for name in ("create_shipment", "send_confirmation", "create_backorder"))

    async def main() -> None:
        await run_fragment(code, namespace)

    run(main)
    instance = namespace["instance"]
    assert instance.status == "completed" and instance.id == "ORD-123"
    assert sorted(calls) == ["create_shipment", "send_confirmation", "validate"]  # in stock: no backorder
    progress = [int(line) for line in capsys.readouterr().out.split()]
    assert progress and progress == sorted(progress) and progress[-1] == 100


def _expense_functions(namespace: dict[str, Any], ran: list[str]) -> None:
    def function(name: str) -> Any:
        async def step(ctx: tf.WorkflowContext) -> str:
            ran.append(name)
            return name
        return step

    for name in ("submit", "remind_manager", "pay", "escalate"):
        namespace[name] = function(name)


@pytest.mark.parametrize("page, first_line", [
    ("README.md", "expense_report = (tf.workflow(\"expense-report\")"),
    ("docs/waiting.md", "expense_report = (\n    tf.workflow(\"expense-report\")"),
])
def test_the_expense_report_fragments_wait_as_they_say_and_pay_on_the_signal(page: str, first_line: str) -> None:
    definition, use = block(page, first_line).split("\n\n", 1)
    ran: list[str] = []
    namespace: dict[str, Any] = {"tf": tf, "report": {"amount": 120}}
    seen: list[Any] = []

    async def main() -> None:
        _expense_functions(namespace, ran)
        await run_fragment(definition, namespace)
        async with open_test_engine() as engine:
            engine.register(namespace["expense_report"])
            namespace["engine"] = engine
            if "exp-1" in use:  # docs/waiting.md signals an instance started elsewhere as "exp-1"
                await engine.start("expense-report", namespace["report"], instance_id="exp-1")
                namespace["iid"] = "exp-1"
            start = trio.current_time()
            await run_fragment(use, namespace)
            iid = namespace["iid"]
            if "delay=3600" in use:  # README's start is delayed an hour, then its timer waits a day
                seen.append((await engine.get_instance(iid)).waiting)
                await trio.sleep(3600 + 1)
                seen.append((await engine.get_instance(iid)).waiting)
            done = await engine.wait(iid)
            seen.append(trio.current_time() - start)
        namespace["done"] = done

    run(main)
    done = namespace["done"]
    assert done.status == "completed" and ran == ["submit", "remind_manager", "pay"]
    assert done.step_results["manager-approval"].output == {"by": "kim"}  # the payload is the output
    if len(seen) == 3:
        assert list(seen[0]) == ["start"] and list(seen[1]) == ["timer"]
        assert seen[1]["timer"] - seen[0]["start"] == pytest.approx(86400, abs=2)
    assert seen[-1] >= 86400  # the reminder's day passed (virtually)


def test_readme_batch_fragment_tolerates_one_declined_invoice_and_names_its_children() -> None:
    code = block("README.md", "invoice = (tf.workflow(\"invoice\")")
    definition, use = code.split("\n\n", 1)
    released: list[Any] = []

    async def reserve(ctx: tf.WorkflowContext) -> str:
        return f"res-{ctx.input['n']}"

    async def release(ctx: tf.WorkflowContext, result: str) -> None:
        released.append(result)

    async def charge(ctx: tf.WorkflowContext) -> str:
        if ctx.input["card"] == "declined":
            raise PermissionError(f"invoice {ctx.input['n']}: card declined")
        return f"ch-{ctx.input['n']}"

    async def refund(ctx: tf.WorkflowContext, result: str) -> None:
        raise AssertionError("no charge is refunded: the declined one never charged")

    async def mail(ctx: tf.WorkflowContext) -> str:
        return f"mailed {ctx.input['n']}"

    invoices = [{"n": 0, "card": "ok"}, {"n": 1, "card": "declined"}, {"n": 2, "card": "ok"}]
    namespace: dict[str, Any] = {"tf": tf, "reserve": reserve, "release": release, "charge": charge,
                                 "refund": refund, "mail": mail, "invoices": invoices}

    async def main() -> None:
        await run_fragment(definition, namespace)
        async with open_test_engine() as engine:
            engine.register(namespace["invoice"])
            engine.register(namespace["batch"])
            namespace["engine"] = engine
            await run_fragment(use, namespace)

    run(main)
    done = namespace["done"]
    assert done.status == "completed"
    assert done.output == ["mailed 0", {"error": "PermissionError", "cause": "invoice 1: card declined"}, "mailed 2"]
    assert sorted(done.children) == [f"{done.id}/invoices/#{n}/bill#1" for n in range(3)]
    assert released == ["res-1"]  # the declined invoice's child saga released its reservation


def _checkout_catch_namespace(card: str, ran: list[str]) -> dict[str, Any]:
    namespace: dict[str, Any] = {"tf": tf}

    async def reserve_stock(ctx: tf.WorkflowContext) -> str:
        ran.append("reserve")
        return "res-1"

    async def release_stock(ctx: tf.WorkflowContext, result: str) -> None:
        ran.append(f"release {result}")

    async def charge_card(ctx: tf.WorkflowContext) -> str:
        if card == "declined":
            raise namespace["CardDeclined"]("card 4000-0000-0000-0002 declined: insufficient funds")
        return "ch-1"

    async def refund_card(ctx: tf.WorkflowContext, result: str) -> None:
        ran.append(f"refund {result}")

    async def ship(ctx: tf.WorkflowContext) -> str:
        return "shipped"

    async def notify_customer(ctx: tf.WorkflowContext) -> None:
        ran.append(f"notify: {ctx.error}")

    namespace.update(reserve_stock=reserve_stock, release_stock=release_stock, charge_card=charge_card,
                     refund_card=refund_card, ship=ship, notify_customer=notify_customer)
    return namespace


def test_errors_page_checkout_catch_ends_as_the_page_says() -> None:
    code = block("docs/errors.md", "class CardDeclined(Exception): ...")

    async def outcome(card: str, order_id: str) -> tuple[Any, list[str]]:
        ran: list[str] = []
        namespace = await run_fragment(code, _checkout_catch_namespace(card, ran))
        async with open_test_engine() as engine:
            engine.register(namespace["checkout"])
            instance = await engine.wait(await engine.start("checkout-catch", {"order_id": order_id}))
        return instance, ran

    async def main() -> None:
        good, ran = await outcome("good", "ord-1")
        assert good.status == "completed" and good.output == "shipped" and ran == ["reserve"]  # "with ship's output"
        declined, ran = await outcome("declined", "ord-2")
        assert declined.status == "failed" and declined.step_results["charge-card"].status == "caught"
        assert (declined.error_name, declined.cause) == (
            "OrderCancelled", "order ord-2: card 4000-0000-0000-0002 declined: insufficient funds")
        assert ran == ["reserve",
                       "notify: {'error': 'CardDeclined', 'cause': 'card 4000-0000-0000-0002 declined: insufficient funds'}",
                       "release res-1"]  # the error as data (the page's shape), then the reservation released

    run(main)


def test_errors_page_succeed_and_fail_lines_each_build() -> None:
    lines = [line.split("#")[0].strip() for line in block("docs/errors.md", ".succeed(\"done\")").splitlines()]

    async def ship(ctx: tf.WorkflowContext) -> str:
        return "shipped"

    for line in lines:
        assert line.startswith((".succeed(", ".fail(")), line
        built = eval(f"tf.workflow('w').step('ship', ship){line}.build()", {"tf": tf, "ship": ship})
        assert isinstance(built, tf.WorkflowDefinition)


def test_errors_page_caught_event_line_prints_a_caught_step() -> None:
    line = block("docs/errors.md", "engine.events.on(\"workflow.step.caught\"")
    code = block("docs/errors.md", "class CardDeclined(Exception): ...")
    printed: list[tuple[Any, ...]] = []

    async def main() -> None:
        namespace = await run_fragment(code, _checkout_catch_namespace("declined", []))
        async with open_test_engine() as engine:
            namespace["engine"] = engine
            namespace["print"] = lambda *args: printed.append(args)
            await run_fragment(line, namespace)
            engine.register(namespace["checkout"])
            await engine.wait(await engine.start("checkout-catch", {"order_id": "ord-3"}))

    run(main)
    assert printed == [("charge-card", "CardDeclined", "->", "notify-customer")]  # `error`: its name


def test_fanout_page_map_fragment_runs_every_line_and_reports() -> None:
    code = block("docs/fanout.md", "batch = (tf.workflow(\"batch\")\n    .map(\"charge-all\"")
    ran: list[str] = []

    class CardDeclined(Exception):
        pass

    def function(name: str, fails: bool = False) -> Any:
        async def step(ctx: tf.WorkflowContext) -> Any:
            ran.append(name if ctx.item is None else f"{name} {ctx.item}")
            if fails and ctx.item == "declined":
                raise CardDeclined(ctx.item)
            return name if ctx.item is None else f"{name} {ctx.item}"
        return step

    async def refund(ctx: tf.WorkflowContext, result: Any) -> None:
        ran.append(f"refund {result}")

    namespace: dict[str, Any] = {"tf": tf, "charge": function("charge", fails=True), "refund": refund,
                                 "mail": function("mail"), "report": function("report"),
                                 "apologise": function("apologise"), "CardDeclined": CardDeclined}

    async def main() -> None:
        await run_fragment(code, namespace)
        async with open_test_engine() as engine:
            engine.register(namespace["batch"])
            good = await engine.wait(await engine.start("batch", {"lines": ["a", "b"]}))
            assert good.status == "completed" and good.step_results["charge-all"].output == ["mail a", "mail b"]
            assert good.output == "report"  # the items' outputs in item order, then report's, passed on
            ran.clear()
            caught = await engine.wait(await engine.start("batch", {"lines": ["declined"]}))
            assert caught.status == "completed" and caught.output == "apologise"
            assert ran == ["charge declined", "apologise"]

    run(main)


def test_fanout_page_child_fragment_bills_through_a_child_and_catches_a_declined_card() -> None:
    code = block("docs/fanout.md", "order = (tf.workflow(\"order\")")
    ran: list[str] = []

    class CardDeclined(Exception):
        pass

    async def bill(ctx: tf.WorkflowContext) -> str:
        if ctx.input["card"] == "declined":
            raise CardDeclined("declined")
        return f"billed {ctx.input['amount']}"

    def function(name: str) -> Any:
        async def step(ctx: tf.WorkflowContext) -> str:
            ran.append(name)
            return name
        return step

    async def release_stock(ctx: tf.WorkflowContext, result: Any) -> None:
        ran.append("release")

    invoice = tf.workflow("invoice").step("bill", bill).build()
    namespace: dict[str, Any] = {"tf": tf, "hold_stock": function("hold"), "release_stock": release_stock,
                                 "ship": function("ship"), "apologise": function("apologise")}

    async def main() -> None:
        await run_fragment(code, namespace)
        async with open_test_engine() as engine:
            engine.register(invoice)
            engine.register(namespace["order"])
            shipped = await engine.wait(await engine.start("order", {"invoice": {"card": "ok", "amount": 5}}))
            assert shipped.status == "completed" and shipped.output == "ship"
            assert shipped.step_results["bill"].output == "billed 5"
            assert list(shipped.children) == [f"{shipped.id}/bill#1"]  # "<parent id>/bill#1"
            ran.clear()
            sorry = await engine.wait(await engine.start("order", {"invoice": {"card": "declined", "amount": 5}}))
            assert sorry.status == "completed" and sorry.output == "apologise" and ran == ["hold", "apologise"]
            assert sorry.step_results["bill"].status == "caught"

    run(main)


def test_waiting_page_test_module_passes() -> None:
    code = block("docs/waiting.md", "import trio\nimport trioflow as tf\n\napproval")
    namespace: dict[str, Any] = {}
    exec(compile(code, "<docs/waiting.md>", "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        async def one(test: Any = test) -> None:
            async with open_test_engine() as engine:
                await test(engine)
        run(one)


def test_adapters_page_conformance_snippet_names_what_the_kit_has() -> None:
    code = block("docs/adapters.md", "# test_my_adapter.py")
    compile(code, "<docs/adapters.md>", "exec")
    assert "from trioflow.testing import check_persistence_adapter" in code
    assert callable(check_persistence_adapter)
