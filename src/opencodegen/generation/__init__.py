"""Text generation with CodeGen models: sampling, stopping/truncation, the batched KV-cache engine."""

from opencodegen.generation.engine import Completion, Generator, StreamEvent, TokenLogprob, Work
from opencodegen.generation.sampling import SamplingParams
from opencodegen.generation.stopping import HUMANEVAL_STOPS, truncate_codegen

__all__ = [
    "HUMANEVAL_STOPS",
    "Completion",
    "Generator",
    "SamplingParams",
    "StreamEvent",
    "TokenLogprob",
    "Work",
    "truncate_codegen",
]
