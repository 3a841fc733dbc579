"""Coverage-guided long runs of the hypothesis fuzzers with atheris (libFuzzer).

    pip install atheris
    python fuzz/atheris_fuzz.py framing -runs=1000000
    python fuzz/atheris_fuzz.py --list

One harness per parser (framing, timestamps, proxy, gelf, events, ring). Every input runs
one of that parser's hypothesis properties through `fuzz_one_input`: its first byte picks
the property and the rest is the choice sequence hypothesis draws the example from. The
properties are the same ones `pytest fuzz` runs, so nothing here needs its own oracle.
Reference implementations and the fuzz modules are instrumented for coverage; the Cython
parsers are not (that would need clang), so guidance comes from the Python side.

Arguments after the parser go to libFuzzer (`-runs=N`, `-max_total_time=S`, a corpus
directory, or a crash file to replay it); `-len_control=0` lets inputs be long from the
start, so more of them hold a whole example. Every 100,000 inputs, and at the end of
`-runs=N`, one line gives how many complete examples each property has run, not counting
inputs too short to draw an example from. A failing property raises: libFuzzer stops and
writes the input to `crash-<sha1>`, and hypothesis saves the example in `.hypothesis/` so
the next `pytest fuzz` replays and shrinks it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import atheris  # noqa: E402

PARSERS = ("framing", "timestamps", "proxy", "gelf", "events", "ring")
REPORT_EVERY = 100_000


def load_properties(parser: str) -> dict[str, Callable[[bytes], object]]:
    """Name → fuzz_one_input of every hypothesis property in fuzz/test_fuzz_<parser>.py."""
    import conftest  # noqa: F401  (registers and loads the hypothesis profile: no deadline)
    from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test

    with atheris.instrument_imports():
        module = importlib.import_module(f"test_fuzz_{parser}")
    properties: dict[str, Callable[[bytes], object]] = {}
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if name.startswith("test_") and hasattr(value, "hypothesis"):
            properties[name] = value.hypothesis.fuzz_one_input
        elif inspect.isclass(value) and issubclass(value, RuleBasedStateMachine):
            test = get_state_machine_test(value, settings=value.TestCase.settings)
            properties[name] = test.hypothesis.fuzz_one_input
    if not properties:
        raise SystemExit(f"no hypothesis properties in fuzz/test_fuzz_{parser}.py")
    return properties


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in (*PARSERS, "--list"):
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(PARSERS)}|--list}} [libFuzzer args]")
    if sys.argv[1] == "--list":
        for parser in PARSERS:
            print(parser + ": " + " ".join(load_properties(parser)))
        return
    parser = sys.argv.pop(1)
    properties = load_properties(parser)
    names = list(properties)
    runners = [properties[name] for name in names]
    counts = [0] * len(names)  # examples that ran to the end and passed
    calls = 0  # every input libFuzzer gave, as its -runs counts them
    runs = next((int(arg[6:]) for arg in sys.argv if arg.startswith("-runs=")), None)

    def report() -> None:
        total = sum(counts)
        per_property = ", ".join(f"{name}={count}" for name, count in zip(names, counts))
        print(f"[{parser}] {calls} inputs, {total} examples: {per_property}",
              file=sys.stderr, flush=True)

    def one_input(data: bytes) -> None:
        nonlocal calls
        calls += 1
        if data:
            index = data[0] % len(runners)
            if runners[index](data[1:]) is not None:
                counts[index] += 1
        if calls % REPORT_EVERY == 0 or calls == runs:
            report()

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
