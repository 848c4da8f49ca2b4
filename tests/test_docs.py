"""The docs describe the code: every setting, instrument, attribute and default list.

Each test fails when someone adds a setting, variable, instrument, attribute or bucket
list without documenting it, or changes one without updating docs/. Prometheus names are
taken from the real opentelemetry-exporter-prometheus, not from a hand-written rule.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation._semconv import HTTP_DURATION_HISTOGRAM_BUCKETS_NEW
from opentelemetry.metrics import Counter, Histogram, UpDownCounter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.util.http import ExcludeList
from prometheus_client import CollectorRegistry, generate_latest

from otel_stream import StreamingMiddleware, attributes, buckets, recorder, shutdown, termination
from otel_stream import environment_variables as env
from otel_stream.config import Settings
from otel_stream.version import __version__

DOCS = Path(__file__).resolve().parent.parent / "docs"


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The part of a page under ``## heading``, up to the next heading of that level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-|: ]+\|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def row_for(rows: list[list[str]], first_cell: str) -> list[str]:
    matches = [row for row in rows if row[0] == first_cell]
    assert len(matches) == 1, f"{len(matches)} table rows start with {first_cell}"
    return matches[0]


# Configuration ---------------------------------------------------------------------------

DEFAULTS = Settings.from_options(environ={})
SETTING_KEYWORDS = list(Settings.names())
VARIABLES = [value for name, value in vars(env).items() if name.startswith("OTEL_STREAM_")]


def test_every_variable_is_documented() -> None:
    text = doc("configuration.md")
    missing = [name for name in VARIABLES if f"`{name}`" not in text]
    assert not missing, f"not in docs/configuration.md: {missing}"


@pytest.mark.parametrize("keyword", SETTING_KEYWORDS)
def test_every_option_has_a_row_with_its_variable_and_default(keyword: str) -> None:
    row = row_for(table_rows(doc("configuration.md")), f"`{keyword}`")
    variable = row[1].strip("`")
    assert variable in VARIABLES, f"{keyword}: {variable!r} is not in environment_variables.py"
    default = getattr(DEFAULTS, keyword)
    if isinstance(default, bool):
        assert row[3] == f"`{str(default).lower()}`"
    elif isinstance(default, int):
        assert row[3] == f"`{default}`"
    elif isinstance(default, tuple):
        (constant,) = [
            name
            for name, value in vars(buckets).items()
            if name.endswith("_BUCKETS") and value == default
        ]
        assert row[3].startswith(f"`{constant}`")
        assert f"{len(default)} boundaries" in row[3]


def _value_differing_from(default: Any) -> tuple[str, Any]:
    """An environment value for a setting, and what the setting must become."""
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, tuple):
        return "1,2,3", (1.0, 2.0, 3.0)
    assert isinstance(default, ExcludeList)
    return "documented-pattern", None


@pytest.mark.parametrize("keyword", SETTING_KEYWORDS)
def test_the_documented_variable_sets_the_documented_option(keyword: str) -> None:
    variable = row_for(table_rows(doc("configuration.md")), f"`{keyword}`")[1].strip("`")
    text, expected = _value_differing_from(getattr(DEFAULTS, keyword))
    value = getattr(Settings.from_options(environ={variable: text}), keyword)
    if isinstance(value, ExcludeList):
        assert value.url_disabled("http://host/documented-pattern")
    else:
        assert value == expected


def test_the_shutdown_flush_timeout_default_is_documented() -> None:
    row = row_for(
        table_rows(doc("configuration.md")), f"`{env.OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT}`"
    )
    assert row[2] == f"`{shutdown.DEFAULT_TIMEOUT:g}`"


def test_the_constructor_arguments_are_documented() -> None:
    rows = table_rows(doc("configuration.md"))
    parameters = inspect.signature(StreamingMiddleware.__init__).parameters.values()
    for parameter in parameters:
        if parameter.name != "self" and parameter.kind is not parameter.VAR_KEYWORD:
            row_for(rows, f"`{parameter.name}`")


# Metrics ---------------------------------------------------------------------------------


def _instruments(meter_provider: MeterProvider) -> dict[str, Any]:
    meter = recorder.get_meter(meter_provider)
    return dict(vars(recorder.Instruments(meter, DEFAULTS)))


def _record(instrument: Any) -> None:
    if isinstance(instrument, Histogram):
        instrument.record(1.0, {})
    else:
        instrument.add(1, {})


def prometheus_name(attribute: str) -> str:
    """The name under which the real Prometheus exporter exposes one instrument."""
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    try:
        _record(_instruments(provider)[attribute])
        exposition = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    names = {
        re.sub(r"_(bucket|sum|count|created)$", "", re.split(r"[{ ]", line, maxsplit=1)[0])
        for line in exposition.splitlines()
        if line and not line.startswith("#") and not line.startswith("target_info")
    }
    assert len(names) == 1, names
    return names.pop()


INSTRUMENT_ATTRIBUTES = list(_instruments(MeterProvider(shutdown_on_exit=False)))
KINDS = (
    (UpDownCounter, "up-down counter"),
    (recorder.ActiveRequests, "up-down counter"),  # observed: a dict update per phase change
    (Counter, "counter"),
    (Histogram, "histogram"),
)


@pytest.mark.parametrize("attribute", INSTRUMENT_ATTRIBUTES)
def test_every_instrument_is_documented_with_its_prometheus_name(attribute: str) -> None:
    instrument = _instruments(MeterProvider(shutdown_on_exit=False))[attribute]
    rows = table_rows(section(doc("metrics.md"), "Instruments"))
    row = row_for(rows, f"`{instrument.name}`")
    kind = next(label for cls, label in KINDS if isinstance(instrument, cls))
    assert row[1:4] == [kind, f"`{instrument.unit}`", f"`{prometheus_name(attribute)}`"]


def test_every_attribute_name_is_documented() -> None:
    text = doc("metrics.md")
    names = [
        value
        for name, value in vars(attributes).items()
        if name.isupper() and isinstance(value, str) and name not in ("SCOPE_NAME", "SCHEMA_URL")
    ]
    missing = [name for name in names if f"`{name}`" not in text]
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_every_termination_reason_is_documented() -> None:
    reasons_in_architecture = {row[0] for row in table_rows(doc("architecture.md"))}
    for reason in termination.REASONS:
        assert f"`{reason}`" in reasons_in_architecture
        assert f"`{reason}`" in doc("metrics.md")


def test_the_printed_default_buckets_are_the_code_defaults() -> None:
    printed = {
        name: tuple(float(value) for value in values.split(","))
        for name, values in re.findall(
            r"`(\w+_BUCKETS)` \(.*\n\n```text\n(.*)\n```", doc("metrics.md")
        )
    }
    defaults = {name: value for name, value in vars(buckets).items() if name.endswith("_BUCKETS")}
    assert printed == defaults


# Bucket fidelity table -------------------------------------------------------------------

NORMAL = NormalDist()
REFERENCE_WORKLOADS = {
    ("time to first byte", 0.08, 0.6),
    ("time to first byte", 0.6, 0.8),
    ("time to first byte", 6.0, 1.0),
    ("stream duration", 0.4, 0.7),
    ("stream duration", 8.0, 0.8),
    ("stream duration", 60.0, 1.0),
}


def histogram_quantile(q: float, bounds: tuple[float, ...], median: float, sigma: float) -> float:
    """Prometheus' estimate from the expected cumulative bucket counts of a log-normal."""
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = NORMAL.cdf(math.log(bound / median) / sigma)
        if count >= q:
            return previous_bound + (bound - previous_bound) * (q - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return bounds[-1]


def seconds(text: str) -> float:
    number, unit = text.split()
    return float(number) / 1000 if unit == "ms" else float(number)


def percent(text: str) -> float:
    return float(text.replace("%", "").strip())


def test_the_fidelity_table_is_what_the_default_buckets_give() -> None:
    lists = {
        "time to first byte": buckets.TTFB_BUCKETS,
        "stream duration": buckets.DURATION_BUCKETS,
    }
    semconv = tuple(float(bound) for bound in HTTP_DURATION_HISTOGRAM_BUCKETS_NEW)
    rows = [row for row in table_rows(doc("metrics.md")) if row[0] in lists]
    assert len(rows) == 18
    workloads = set()
    for histogram, workload, quantile, true, ours, ours_error, theirs, theirs_error in rows:
        median_text, sigma_text = workload.split(",")
        median, sigma = seconds(median_text), float(sigma_text)
        workloads.add((histogram, median, sigma))
        q = int(quantile.removeprefix("p")) / 100
        exact = median * math.exp(sigma * NORMAL.inv_cdf(q))
        estimate = histogram_quantile(q, lists[histogram], median, sigma)
        baseline = histogram_quantile(q, semconv, median, sigma)
        assert seconds(true) == pytest.approx(exact, rel=0.006)
        assert seconds(ours) == pytest.approx(estimate, rel=0.006)
        assert seconds(theirs) == pytest.approx(baseline, rel=0.006)
        assert percent(ours_error) == pytest.approx((estimate / exact - 1) * 100, abs=0.051)
        assert percent(theirs_error) == pytest.approx((baseline / exact - 1) * 100, abs=0.051)
    assert workloads == REFERENCE_WORKLOADS


# Links -----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ["architecture.md", "metrics.md", "configuration.md"])
def test_links_between_docs_resolve(page: str) -> None:
    for target, anchor in re.findall(r"\]\(([\w\-]+\.md)?(?:#([\w\-]+))?\)", doc(page)):
        text = doc(target or page)
        if anchor:
            headings = {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
            assert anchor in headings, f"{page}: no heading #{anchor} in {target or page}"


# The repository stands alone -------------------------------------------------------------

ROOT = DOCS.parent
#: What a newcomer reads: the README, every page of docs/, the dashboards' README.
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "dashboards" / "README.md"]
#: Pointers to what a reader of the repository does not have.
OUTSIDE = {
    "the design contract": re.compile(r"DESIGN\.md"),
    "a directory beside the checkout": re.compile(r"\.\./shared|/work/"),
    "an issue or pull request number": re.compile(
        r"(?i)\b(?:issue|pull request|PR|ticket)s?\s*#?\d+|(?<![\w&])#\d+\b|/(?:issues|pull)/\d+"
    ),
    "a tracker": re.compile(r"(?i)\btracker\b|\bjira\b"),
}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_docs_point_nowhere_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = [
        f"{what}: {match.group(0)!r} on line {text.count(chr(10), 0, match.start()) + 1}"
        for what, pattern in OUTSIDE.items()
        for match in pattern.finditer(text)
    ]
    assert not found, found


@pytest.mark.parametrize("text", ["see DESIGN.md", "part of issue 7", "fixed in #2871", "PR 12"])
def test_the_outside_pointers_are_recognised(text: str) -> None:
    assert any(pattern.search(text) for pattern in OUTSIDE.values())


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_picture_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z]+:", path):
            continue  # an anchor on the same page, or a URL
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, missing


def test_every_documented_stream_variable_exists() -> None:
    """The other direction: configuration.md names no OTEL_STREAM_* variable the code lacks."""
    documented = set(re.findall(r"`(OTEL_STREAM_[A-Z0-9_]+)`", doc("configuration.md")))
    assert documented - set(VARIABLES) == set()


def test_the_readme_opens_with_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert commands == ["pip install -e '.[demo]' && otel-stream demo", "bash .ci/run"]
    assert readme.index("```sh") < readme.index("\n## ")  # above every section


#: ``pip install otel-stream``, from an index (flags before it allowed).
FROM_AN_INDEX = re.compile(
    r"pip install\s+(?:-\S+\s+)*['\"]?otel-stream(?:\[[\w,]+\])?['\"]?(?:\s|$|`)"
)


@pytest.mark.parametrize(
    ("text", "from_an_index"),
    [
        ("pip install otel-stream opentelemetry-sdk", True),
        ("pip install -U 'otel-stream[otlp]'\n", True),
        ("pip install -e '.[otlp]'", False),
        ("pip install -e '.[demo]' && otel-stream demo", False),
    ],
)
def test_an_install_from_an_index_is_recognised(text: str, from_an_index: bool) -> None:
    assert bool(FROM_AN_INDEX.search(text)) is from_an_index


def test_the_install_instructions_work_before_publication() -> None:
    """No page tells a newcomer to install from an index that does not serve otel-stream."""
    for page in PAGES:
        match = FROM_AN_INDEX.search(page.read_text(encoding="utf-8"))
        assert match is None, (page, match)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[otlp]'" in readme
    assert "pip install -e '.[otlp]'" in doc("auto-instrumentation.md")
    # The wheel the pages name is the one `pip wheel .` builds from this checkout.
    for page in PAGES:
        for version in re.findall(r"otel_stream-([\w.]+)-py3-none-any\.whl", page.read_text()):
            assert version == __version__, page
