"""Every file of the seed corpus (tests/fuzz/corpus/<target>/) through its fuzz target's
checks: the seeds, and the inputs that once found a defect, stay passing. Under the
sanitizer build (tools/sanitize.sh) this also runs the C reader on them with ASan+UBSan."""

import os

import fuzz_targets as targets
import pytest

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
# the JSON target is C only (build/fuzz/json); its seeds are safetensors headers
CASES = [
    (target, name)
    for target in sorted(targets.TARGETS)
    for name in sorted(os.listdir(os.path.join(CORPUS, target)))
]


@pytest.mark.parametrize("target,name", CASES)
def test_corpus_file(target, name):
    with open(os.path.join(CORPUS, target, name), "rb") as f:
        targets.TARGETS[target](f.read())
