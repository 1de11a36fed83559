"""Session options shared by the Whisper graphs' ONNX Runtime sessions (runner and aligner)."""

from __future__ import annotations


def session_options(threads: int, spin: bool = True):
    """SessionOptions for one request at a time on ``threads`` intra-op threads.

    Spinning threads wait for the next operator without sleeping: a decoder step is hundreds
    of tiny operators, so on an idle CPU spinning makes each step markedly faster. On a CPU
    shared with busy processes spinning threads fight them (a step can take twice as long);
    pass ``spin=False`` there.

    Each session has its own threads, and the encoder, decoder and aligner take turns on the
    same cores: threads left spinning after one session's run slowed the next session's
    operators (an encode right after decoder steps, the first steps after an encode). So
    threads spin only while their own session runs (docs/benchmarks.md, "Encoder windows
    sized to the audio", "Speed": encoder and decoder steps both faster).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One request at a time on a small CPU: all threads inside each operator, none across.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options
