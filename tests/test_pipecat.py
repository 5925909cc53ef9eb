"""A voice-agent framework end to end (issue 17): Pipecat's own pipeline (its Silero VAD, its
``DeepgramSTTService`` with ``base_url`` at our ingest) fed real-time espeak-ng speech; its VAD
stops make the plugin send ``Finalize``, and its ``TranscriptionFrame``s must carry the words.

Pipecat runs in a virtual environment of its own under .cache/ (``bench.pipecat``; made on the
first run, about a minute): its install moves packages ``requirements.txt`` pins."""

from __future__ import annotations

from bench.pipecat import MAX_WER, run, summary
from bench.talkers import SENTENCES
from services.stack import Stack
from tools.speech import Speech


def test_pipecats_deepgram_plugin_transcribes_through_its_own_pipeline(
    ct2_stack: Stack, speech: Speech
) -> None:
    stream = speech.stream(16000, SENTENCES)
    heard = summary(run(ct2_stack.uri, stream.path), stream.texts)
    assert heard["finals"] >= len(SENTENCES) - 1, heard
    assert heard["from_finalize"] >= 1, heard  # the plugin's Finalize was answered as Deepgram does
    assert heard["wer"] <= MAX_WER, heard
