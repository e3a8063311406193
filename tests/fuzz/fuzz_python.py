"""Coverage-guided fuzzing of a Python target of tests/fuzz/fuzz_targets.py with atheris.

    python tests/fuzz/fuzz_python.py TARGET [libFuzzer flags] [corpus dirs]

TARGET is prompt or tokenizer (coverage of sdcore/prompt.py and sdcore/tokenizer.py), or
safetensors (the extension's Weights.open: its C code is not instrumented here, so this
one mostly replays and mutates without guidance; the C reader has its own libFuzzer
targets). An exception that escapes the target is reported by atheris with the input
that caused it, and the exit status is non-zero.
"""

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["sdcore", "fuzz_targets"]):
    import fuzz_targets as targets


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        raise SystemExit(f"usage: fuzz_python.py {{{','.join(targets.TARGETS)}}} [flags] [dirs]")
    check = targets.TARGETS[sys.argv[1]]
    if sys.argv[1] in ("prompt", "tokenizer"):
        targets.default_tokenizer()  # loaded once, before the timed runs
    atheris.Setup([sys.argv[0], *sys.argv[2:]], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
