"""Text generation: request types, the decode loop, sampling, the scheduler, streamed text.

- :mod:`.request`: :class:`GenerationRequest` (one sequence and its knobs), its result and events;
- :mod:`.sampling`: greedy or temperature / top-p choice of the next token, per row;
- :mod:`.decode`: :class:`DecodeBatch`, rows decoded together with one KV cache;
- :mod:`.scheduler`: :class:`GenerationScheduler`, continuous batching on a worker thread;
- :mod:`.job`: :class:`GenerationJob`, one request in the scheduler and the tokens it gets back;
- :mod:`.text`: :class:`TextPieces`, token ids to text pieces for streaming.

The model itself is reached through the adapter :class:`service.models.causal_lm.CausalLM`.
"""

from .decode import DecodeBatch, generate, stream
from .job import GenerationJob, Token, sampling_seed
from .request import FinishReason, GenerationRequest, GenerationResult, TokenEvent
from .sampling import choose_tokens, nucleus_pick
from .scheduler import GenerationScheduler
from .text import TextPieces

__all__ = [
    "DecodeBatch",
    "FinishReason",
    "GenerationJob",
    "GenerationRequest",
    "GenerationResult",
    "GenerationScheduler",
    "TextPieces",
    "Token",
    "TokenEvent",
    "choose_tokens",
    "generate",
    "nucleus_pick",
    "sampling_seed",
    "stream",
]
