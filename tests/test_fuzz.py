"""Property-based fuzzing of every input llmzoo reads (targets in tests/fuzzing.py): a model that
runs with finite logits, or an LLMZooError — never another exception, never a hang.

A bounded, derandomised profile runs here (about 20-40 s on 2 cores); `python scripts/fuzz.py`
runs a long one and prints the counts. The per-case deadline is generous on purpose: it is there
to turn a hang (a quadratic plan, an alias bomb) into a failure, not to time anything."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing

PROFILE = dict(
    deadline=timedelta(seconds=60),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
EXAMPLES = {"zoo_config": 30, "yaml_text": 25, "hf_config": 40, "index_file": 25, "safetensors_header": 30}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fuzzing.CheckpointCase(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("target", list(fuzzing.TARGETS))
def test_fuzz_config_inputs(target):
    @settings(max_examples=EXAMPLES[target], **PROFILE)
    @given(st.data())
    def case(data):
        assert fuzzing.TARGETS[target](data) in ("ran", "meta", "rejected")

    case()


@pytest.mark.parametrize("target", list(fuzzing.CHECKPOINT_TARGETS))
def test_fuzz_checkpoint_files(target, checkpoint):
    @settings(max_examples=EXAMPLES[target], **PROFILE)
    @given(st.data())
    def case(data):
        assert fuzzing.CHECKPOINT_TARGETS[target](data, checkpoint) in ("ran", "rejected")

    case()
