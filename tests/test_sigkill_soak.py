"""SIGKILL soak (helper "soak"): a child process (tests/sigkill_soak_child.py) runs a mixed,
seeded workload on a real SQLite file and is SIGKILLed at random moments, restarted on the same
file, for ROUNDS rounds; a last run drains everything and the invariants are checked from storage
and from the fsynced side log.

Short by default. As a soak:
    SOAK_SEEDS=1,2,3 SOAK_ROUNDS=20 SOAK_N=6 python -m pytest tests/test_sigkill_soak.py -s
or  python tests/test_sigkill_soak.py SEED ROUNDS N [TMPDIR]

Knobs (environment, read by the driver and the child alike):
    SOAK_KILL_MIN / SOAK_KILL_MAX   seconds after the engine opened at which the child is SIGKILLed (0.2 / 3.0)
    SOAK_CANCEL_P                   share of instances cancelled (0.15)
    SOAK_CANCEL_KID_P               share of sagas whose child is cancelled directly (0)
    SOAK_TSAGA_TIMEOUT              with_timeout of the "tsaga" workflow (3.0)
    SOAK_MAX_RUNNING                open_engine(max_running=) (10000)
    SOAK_DIE_AFTER_ACK_P            the child SIGKILLs itself right after logging a signal/cancel ack (0)
    SOAK_DUPES                      "1": keyed signals are sent again, some twice at once (1)
N is the number of new instances planned per generation; every generation starts (idempotently)
all of them planned so far. Each seed's files stay in the work directory: soakSEED.db, .log (the
side log), .dump.json (the final dump), .genG.err (stderr of each process).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sigkill_soak_child as child  # noqa: E402

TERMINAL = {"completed", "failed", "cancelled", "timed_out", "compensated"}
JOB_STEPS = {"a", "b", "charge", "apology", "la", "lb", "final", "k1", "k2", "count", "fetch", "p1t", "p2t", "finish"}
COMPENSABLE = JOB_STEPS
RECEIVES = {"go", "tick", "poke"}


def run_soak(seed: int, rounds: int, n: int, workdir: str) -> dict[str, Any]:
    db = os.path.join(workdir, f"soak{seed}.db")
    logp = os.path.join(workdir, f"soak{seed}.log")
    for p in (db, logp, db + "-wal", db + "-shm", db + ".lock"):
        if os.path.exists(p):
            os.remove(p)
    rng = random.Random(seed)
    py = sys.executable
    script = os.path.join(HERE, "sigkill_soak_child.py")
    kills = []
    for gen in range(rounds):
        with open(os.path.join(workdir, f"soak{seed}.gen{gen}.err"), "w") as err:
            proc = subprocess.Popen([py, script, db, logp, str(seed), str(gen), "run", str(n)],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            assert proc.stdout is not None
            first = proc.stdout.readline()  # "open": the engine is open (resume began)
            delay = rng.uniform(float(os.environ.get("SOAK_KILL_MIN", "0.2")),
                                float(os.environ.get("SOAK_KILL_MAX", "3.0")))
            time.sleep(delay)
            rc = proc.poll()
            if rc is not None:
                proc.stdout.close()
            if rc == -signal.SIGKILL:  # it killed itself right after an acknowledgement
                kills.append("self")
                with open(logp, "a") as f:
                    f.write(f"kill {gen} {time.time():.4f}\n")
                continue
            if rc is not None:
                raise AssertionError(f"seed {seed} gen {gen}: child exited early rc={rc} first={first!r}; "
                                     f"see {err.name}")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            with open(logp, "a") as f:
                f.write(f"kill {gen} {time.time():.4f}\n")
            kills.append(round(delay, 2))
    gen = rounds
    with open(os.path.join(workdir, f"soak{seed}.final.err"), "w") as err:
        out = subprocess.run([py, script, db, logp, str(seed), str(gen), "final", str(n)],
                             stdout=subprocess.PIPE, stderr=err, text=True, timeout=400)
    lines = out.stdout.strip().split("\n")
    if out.returncode != 0 or len(lines) < 2:
        raise AssertionError(f"seed {seed}: final run failed rc={out.returncode}; see {err.name}")
    dumped = json.loads(lines[-1])
    with open(os.path.join(workdir, f"soak{seed}.dump.json"), "w") as f:
        f.write(lines[-1])
    violations = check(dumped, child.read_log(logp), child.plan(seed, n, rounds + 1))
    return {"seed": seed, "rounds": rounds, "n": n, "kills": kills, "instances": len(dumped["listed"]),
            "violations": violations, "stats": dict(STATS), "db": db, "log": logp,
            "statuses": collections.Counter(v["status"] for v in dumped["listed"].values())}


STATS: collections.Counter[str] = collections.Counter()


def check(d: dict[str, Any], log: list[list[str]], the_plan: dict[str, Any]) -> list[str]:
    v: list[str] = []
    STATS.clear()
    listed, single = d["listed"], d["single"]
    # -- storage: terminal, listings agree ---------------------------------------------------------
    for iid in the_plan:
        if iid not in listed:
            v.append(f"{iid}: planned and start-acked? not stored "
                     f"(start-ack logged: {any(p[0] == 'start-ack' and p[2] == iid for p in log)})")
    for iid, inst in listed.items():
        if inst["status"] not in TERMINAL:
            v.append(f"{iid}: not terminal after drain: {inst['status']} waiting={inst['waiting']}")
        if single.get(iid) != inst:
            v.append(f"{iid}: get_instances and get_instance disagree: {inst['status']} vs "
                     f"{(single.get(iid) or {}).get('status')}")
    for st, ids in d["by_status"].items():
        want = sorted(i for i, x in listed.items() if x["status"] == st)
        if ids != want:
            v.append(f"listing status={st} {ids} disagrees with statuses {want}")
    for wf, ids in d.get("by_wf", {}).items():
        want = sorted(i for i, x in listed.items() if x["workflow"] == wf)
        if ids != want:
            v.append(f"listing workflow={wf} (newest first, paged) {ids} disagrees with {want}")
    # -- children ------------------------------------------------------------------------------------
    for iid, inst in listed.items():
        for kid in inst["children"]:
            k = listed.get(kid)
            if k is None:
                v.append(f"{iid}: child {kid} listed but not stored")
                continue
            if k["status"] not in TERMINAL:
                v.append(f"{iid} ({inst['status']}): child {kid} is {k['status']}")
            if inst["status"] == "completed" and k["status"] != "completed":
                v.append(f"{iid} completed but its child {kid} is {k['status']}")
            if inst["status"] in ("failed", "cancelled", "timed_out") and k["status"] == "completed":
                v.append(f"{iid} {inst['status']} but its child {kid} stayed completed (not compensated)")
    # -- the side log ------------------------------------------------------------------------------
    x_ok: dict[tuple[str, str], list[int]] = collections.defaultdict(list)   # (iid, exec) -> gens
    c_begin: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    c_ok: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    c_order: dict[str, list[str]] = collections.defaultdict(list)
    for i, p in enumerate(log):
        if p[0] == "x" and p[6] == "ok":
            x_ok[(p[2], p[3])].append(int(p[1]))
        elif p[0] == "c":
            key = (p[2], p[3])
            if p[5] == "begin":
                if key not in x_ok:
                    v.append(f"{p[2]}: compensation of {p[3]} began (gen {p[1]}, log line {i}) with no completed "
                             f"execution before it")
                c_begin[key].append(int(p[1]))
            else:
                c_ok[key].append(int(p[1]))
                if p[3] not in c_order[p[2]]:
                    c_order[p[2]].append(p[3])
    for key, gens in c_ok.items():
        same = [g for g, c in collections.Counter(gens).items() if c > 1]
        if len(gens) > 1:
            STATS["compensation reruns across a kill"] += 1
        if same:
            v.append(f"{key[0]}: compensation of {key[1]} completed {len(gens)} times, twice in one process "
                     f"(gens {gens})")
    # -- per instance ----------------------------------------------------------------------------------
    acked = collections.defaultdict(list)
    for p in log:
        if p[0] == "sig-ack":
            acked[p[2]].append(p[4])
    ack_time = {p[4]: float(p[5]) for p in log if p[0] == "sig-ack"}
    for iid, inst in listed.items():
        st = inst["status"]
        for r in inst["history"]:
            if r["step"] == "poke" and r["status"] == "caught" and r["error_name"] == "SignalTimeoutError":
                key = f"{iid}:poke:0"
                STATS["receive timeouts checked"] += 1
                if key in ack_time and r["started_at"] is not None and ack_time[key] < r["started_at"] + 1.0 - 0.05:
                    v.append(f"{iid}: poke timed out (started {r['started_at']:.3f}, deadline +1.0 s) though "
                             f"signal {key} was acknowledged at {ack_time[key]:.3f}")
        for r in inst["history"]:
            if r["step"] in RECEIVES and r["status"] == "completed" and r["output"].get("dupe"):
                v.append(f"{iid}: {r['id']} took a duplicate (keyed) send: {r['output']}")
        hist = inst["history"]
        run_prefix = f"#{inst['runs']}/" if inst["runs"] else ""
        # received signals
        got = [r["output"]["key"] for r in hist if r["step"] in RECEIVES and r["status"] == "completed"]
        if inst["workflow"] == "loop" and st == "completed":
            got = inst["output"]["got"]
        STATS["signals received checked"] += len(got)
        dup = [k for k, c in collections.Counter(got).items() if c > 1]
        if dup:
            v.append(f"{iid}: signals received twice: {dup}")
        if st == "completed" and inst["workflow"] in ("saga", "tsaga", "loop"):
            for k in acked[iid]:
                if k not in got:
                    v.append(f"{iid}: acknowledged signal {k} never received by a completed instance (got {got})")
            if inst["workflow"] == "loop":
                want = [k for _, k in the_plan[iid]["signals"]]
                if got != want:
                    v.append(f"{iid}: loop received {got}, sent {want}")
        for k in got:
            if k.split(":")[0] != iid:
                v.append(f"{iid}: received a signal for another instance {k}")
        for r in hist:
            if r["step"] in JOB_STEPS and r["status"] in ("completed", "compensated") \
                    and (iid, run_prefix + r["id"]) not in x_ok:
                v.append(f"{iid}: {r['id']} recorded {r['status']}, but no execution of it ever returned")
        if st in TERMINAL and inst["completed_at"] is None:
            v.append(f"{iid}: {st} with no completed_at")
        seqs = [r["seq"] for r in hist if r["seq"] >= 0]
        if len(seqs) != len(set(seqs)):
            v.append(f"{iid}: history seqs repeat: {sorted(seqs)}")
        for r in hist:
            if r["started_at"] is not None and r["completed_at"] is not None and r["completed_at"] < r["started_at"]:
                v.append(f"{iid}: {r['id']} completed_at before started_at")
        if inst["workflow"] == "loop" and st == "completed" and inst["runs"] != inst["input"]["K"] - 1:
            v.append(f"{iid}: loop of K={inst['input']['K']} completed after {inst['runs']} continues")
        # outputs of a completed instance
        if st in ("completed",):
            for r in hist:
                if r["step"] in JOB_STEPS and r["status"] == "completed":
                    want = child.expected_output(r["step"], inst["input"]["tag"], r["lane"])
                    if r["output"] != want:
                        v.append(f"{iid}: {r['id']} output {r['output']} != {want}")
            if inst["workflow"] in ("saga", "tsaga"):
                want = child.expected_output("final", inst["input"]["tag"], "")
                if inst["output"] != want:
                    v.append(f"{iid}: output {inst['output']} != {want}")
            for key in c_begin:
                if key[0] == iid:
                    v.append(f"{iid}: completed, but compensation of {key[1]} ran")
        # compensation of an instance that ended badly / was compensated as a unit
        if st in ("failed", "cancelled", "timed_out", "compensated"):
            recs = sorted([r for r in hist if r["step"] in COMPENSABLE], key=lambda r: r["seq"])
            for r in recs:
                key = (iid, run_prefix + r["id"])
                if r["status"] == "completed":
                    if r["step"] not in inst["compensation_errors"]:
                        v.append(f"{iid} ({st}): {r['id']} completed and never compensated "
                                 f"(compensated={inst['compensated']})")
                elif r["status"] == "compensated":
                    if key not in c_ok:
                        v.append(f"{iid} ({st}): {r['id']} recorded compensated with no compensation in the log")
                    if key not in x_ok:
                        v.append(f"{iid} ({st}): {r['id']} compensated, never logged completing")
                elif key in c_begin:
                    v.append(f"{iid} ({st}): {r['id']} is {r['status']} yet its compensation ran "
                             f"(gens {c_begin[key]})")
            want_order = [run_prefix + r["id"] for r in sorted(
                [r for r in recs if r["status"] == "compensated"], key=lambda r: -r["seq"])]
            have = [e for e in c_order.get(iid, []) if e in want_order]
            STATS["compensated executions checked"] += len(want_order)
            STATS["instances with >=2 compensations ordered"] += len(want_order) >= 2
            if have != want_order:
                v.append(f"{iid} ({st}): compensation order {have}, newest first would be {want_order}")
            # executions that completed (logged ok) and have no record at all: lost completions
        # a cancel that said yes
    for p in log:
        if p[0] == "cancel-ack" and p[3] == "True":
            inst = listed.get(p[2])
            STATS["cancel() said True"] += 1
            STATS["cancel() of a child said True"] += "/" in p[2]
            if inst is not None and inst["status"] != "cancelled":
                v.append(f"{p[2]}: cancel() said True (gen {p[1]}) but it ended {inst['status']}")
    return v


def test_sigkill_soak(tmp_path: Any) -> None:
    seeds = [int(s) for s in os.environ.get("SOAK_SEEDS", "1").split(",")]
    rounds = int(os.environ.get("SOAK_ROUNDS", "4"))
    n = int(os.environ.get("SOAK_N", "4"))
    bad = []
    for seed in seeds:
        res = run_soak(seed, rounds, n, str(tmp_path))
        print(json.dumps({k: res[k] for k in ("seed", "rounds", "instances", "statuses")}, default=str))
        bad += [f"seed {seed}: {x}" for x in res["violations"]]
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    seed, rounds, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    wd = sys.argv[4] if len(sys.argv) > 4 else tempfile.mkdtemp(prefix="soak")
    os.makedirs(wd, exist_ok=True)
    t0 = time.time()
    res = run_soak(seed, rounds, n, wd)
    res["secs"] = round(time.time() - t0, 1)
    print(json.dumps(res, default=str, indent=1))
