"""Long fuzz run by hand: every target of tests/fuzzing.py, counting outcomes instead of stopping.

    python scripts/fuzz.py --examples 2000            # per target; about 0.1-0.5 s a case
    python scripts/fuzz.py --targets index_file --examples 500 --timeout 10

Prints, per target and in total: cases, rejected (an LLMZooError), accepted-and-ran (a model whose
tiny forward gave finite logits), accepted-on-meta (too big to run: built on the meta device),
other exceptions (a contract violation: listed with their first message) and hangs (a case past
--timeout seconds). Exit status 1 if any other exception or hang was seen.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fuzzing  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1000, help="cases per target")
    ap.add_argument("--targets", nargs="*", default=[*fuzzing.TARGETS, *fuzzing.CHECKPOINT_TARGETS])
    ap.add_argument("--timeout", type=int, default=10, help="seconds before a case counts as a hang")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    import llmzoo

    llmzoo.build("llama-2-7b", scale="tiny", device="meta")  # one-time costs (torch's meta init path,
    llmzoo.build("llama-2-7b", scale="tiny")  # the zoo index) are not a case's
    counts: dict[str, collections.Counter] = {}
    others: list[str] = []
    slowest: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        for target in args.targets:
            c = counts[target] = collections.Counter()
            if target in fuzzing.CHECKPOINT_TARGETS and ckpt is None:
                ckpt = fuzzing.CheckpointCase(Path(tmp))
            fn = fuzzing.TARGETS.get(target) or (lambda data, f=fuzzing.CHECKPOINT_TARGETS[target]: f(data, ckpt))
            start = time.time()

            @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))
            @given(st.data())
            def case(data):
                t0 = time.time()
                signal.alarm(3 * args.timeout)  # breaks a real hang; a slow case is judged below
                try:
                    result = fn(data)
                    took = time.time() - t0
                    c["hang" if took > args.timeout else result] += 1
                    if took > args.timeout:
                        others.append(f"{target}: SLOW {took:.1f}s: {fuzzing.CURRENT[0][:400]}")
                except Hang:
                    c["hang"] += 1
                    others.append(f"{target}: HANG past {3 * args.timeout}s: {fuzzing.CURRENT[0][:400]}")
                except Exception as e:  # noqa: BLE001 - counting contract violations is the point
                    if type(e).__module__.startswith("hypothesis"):
                        raise  # hypothesis' own control flow (an unsatisfiable draw, a stop)
                    c["other"] += 1
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    others.append(f"{target}: {type(e).__name__}: {str(e)[:300]} "
                                  f"({Path(where.filename).name}:{where.lineno}) on {fuzzing.CURRENT[0][:600]}")
                    print("  OTHER", others[-1], flush=True)
                finally:
                    signal.alarm(0)
                    slowest[target] = max(slowest.get(target, 0.0), time.time() - t0)

            try:
                case()
            except Exception as e:  # noqa: BLE001 - a hypothesis-level failure stops this target only
                c["aborted"] += 1
                print(f"  {target}: hypothesis stopped the target: {type(e).__name__}: {str(e)[:200]}", flush=True)
            c["cases"] = sum(v for k, v in c.items() if k != "cases")
            print(f"{target:20s} {dict(c)}  ({time.time() - start:.0f}s, slowest case {slowest[target]:.2f}s)",
                  flush=True)
    total = sum(counts.values(), collections.Counter())
    print("\n| target | cases | rejected | accepted-and-ran | accepted (meta only) | other exceptions | hangs |")
    print("|---|---|---|---|---|---|---|")
    for name, c in [*counts.items(), ("total", total)]:
        print(f"| {name} | {c['cases']} | {c['rejected']} | {c['ran']} | {c['meta']} | {c['other']} | {c['hang']} |")
    for line in others[:50]:
        print("  ", line)
    return 1 if total["other"] or total["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
