"""``otel-stream demo``: an instrumented fake model, a realistic load, and a report.

* :mod:`.model`: the fake OpenAI-compatible streaming endpoint, and its own stopwatch.
* :mod:`.relay`: the relay (an LLM gateway) that ``--relay`` puts in front of the model.
* :mod:`.telemetry`: the SDK providers (in-memory reader, ``OTEL_*`` exporters, Prometheus).
* :mod:`.load`: the clients and their scenarios.
* :mod:`.report`: quantiles from the exported buckets, beside the clients' truth.
* :mod:`.run`: the server thread, the load loop and the ``--serve`` mode.

Everything here needs the ``demo`` extra: ``pip install 'otel-stream[demo]'``.
"""
