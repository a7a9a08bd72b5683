"""What a user installing trioflow meets first (issue 16, item 13): its version, the names the
public classes report, and clear errors when the testing extra is missing."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import trioflow as tf
import trioflow.testing


def test_the_version_is_the_installed_distributions() -> None:
    assert tf.__version__ == version("trioflow")


def test_public_classes_and_functions_report_the_public_module() -> None:
    for value in (tf.WorkflowInstance, tf.Catch, tf.Retry, tf.DefinitionError, tf.open_engine, tf.execute_workflow,
                  tf.Engine, tf.FailStepError):
        assert value.__module__ == "trioflow", value
    assert repr(tf.DefinitionError("x")) == "DefinitionError('x')"
    assert tf.adapters.SQLiteAdapter.__module__ == tf.adapters.MemoryAdapter.__module__ == "trioflow.adapters"
    assert trioflow.testing.ScriptedJob.__module__ == "trioflow.testing"


def test_the_facades_export_no_machinery_of_their_own() -> None:
    """The helpers that build the facades (lazy exports, public module names) were public
    names of ``trioflow`` and ``trioflow.adapters`` too, documented nowhere."""
    import trioflow.adapters
    for facade in (tf, trioflow.adapters):
        public = {name: getattr(facade, name) for name in dir(facade) if not name.startswith("_")}
        leaked = [name for name, value in public.items()
                  if getattr(getattr(value, "__code__", None), "co_filename", "").endswith("_lazy.py")]
        assert not leaked, f"{facade.__name__} exports {leaked}"


def test_the_fixture_without_pytest_trio_names_the_extra_to_install(tmp_path: Path) -> None:
    (tmp_path / "test_uses_engine.py").write_text("async def test_x(trioflow_engine):\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:trio", "-p", "no:cacheprovider", "-W", "ignore", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "the trioflow_engine fixture needs pytest-trio" in done.stdout
    assert "pip install 'trioflow[testing]'" in done.stdout


def test_strategies_without_hypothesis_name_the_extra_to_install() -> None:
    code = "import sys; sys.modules['hypothesis'] = None\nimport trioflow.testing.strategies"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert "trioflow.testing.strategies needs hypothesis" in done.stderr
    assert "pip install 'trioflow[testing]'" in done.stderr


def test_import_loads_no_module_only_some_values_need() -> None:
    # ``import trioflow`` is timed against ``import trio`` (bench/): the modules of value types
    # a workflow may never store load when it does, not with trioflow; nor those of a refused
    # call's message (difflib) or the testing kit's clock (numbers).
    code = ("import sys, trio; before = set(sys.modules); import trioflow\n"
            "print(sorted({'decimal', 'uuid', 'sqlite3', 'hypothesis', 'zoneinfo', 'difflib', 'numbers'}"
            " & (set(sys.modules) - before)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_import_loads_neither_the_codec_nor_the_engine() -> None:
    # What runs workflows loads on first use (runtime/__init__.py): a module that only defines
    # workflows imports fast. (The context once imported the codec for one function.)
    code = ("import sys; import trioflow\n"
            "print(sorted({'msgpack', 'trioflow._codec', 'trioflow._engine', 'trioflow.actors', 'trioflow.adapters'}"
            " & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_decimals_and_uuids_round_trip_in_an_interpreter_that_had_not_loaded_their_modules() -> None:
    import decimal
    import uuid

    from trioflow._codec import encode_payload

    stored = encode_payload({"d": decimal.Decimal("-1.50"), "u": uuid.UUID(int=7)}, "a value")
    code = ("import sys, trioflow\nfrom trioflow._codec import encode_payload, decode_payload\n"
            "assert 'decimal' not in sys.modules and 'uuid' not in sys.modules\n"
            f"read = decode_payload({stored!r})\n"  # decoding loads them
            "import decimal, uuid\n"
            "assert read == {'d': decimal.Decimal('-1.50'), 'u': uuid.UUID(int=7)}, read\n"
            "assert type(read['d']) is decimal.Decimal and type(read['u']) is uuid.UUID\n"
            "assert decode_payload(encode_payload(read, 'a value')) == read\n"  # and encoding knows them
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
