"""The LLM judge against a real OpenAI-compatible HTTP server on loopback, started here, and how
the harness folds verdicts and groups into the metrics."""

from __future__ import annotations

import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sftkey_lora.evaluation.harness import grade_samples
from sftkey_lora.evaluation.judge import Case, JudgeFailure, judge_all, parse_reply
from sftkey_lora.recipe import EvalConfig, JudgeConfig
from sftkey_lora.tags import PAPER_TAGS

SECRET = "sk-test-never-written"


class FakeJudge(BaseHTTPRequestHandler):
    """Behaves by a word in the question: SLOW (past the timeout), BROKEN (HTTP 500),
    GARBAGE (neither yes nor no), NOJSON (a body that is not JSON); otherwise says yes when
    the reference appears in the response."""

    seen: list[tuple[str | None, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server hook's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.seen.append((self.headers.get("Authorization"), body))
        prompt = body["messages"][0]["content"]
        question = prompt.split("**Question**:\n")[1].split("\n")[0]
        first = prompt.split("**Response 1**:\n")[1].split("\n")[0]
        second = prompt.split("**Response 2**:\n")[1].split("\n\nPlease")[0]
        if "SLOW" in question:
            time.sleep(1.5)
        if "BROKEN" in question:
            self.send_error(500, "model crashed")
            return
        reply = {"GARBAGE": "Perhaps."}.get(question, "Yes." if first in second else "No.")
        payload = b"not json" if "NOJSON" in question else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except BrokenPipeError:  # the client timed out and hung up, as the SLOW case means it to
            pass

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def config(url: str, **extra) -> JudgeConfig:
    return JudgeConfig(url=url, model="judge-70b", timeout=0.5, workers=3, **extra)


def test_verdicts_and_failures_are_counted(judge_url, monkeypatch) -> None:
    monkeypatch.setenv("SFTKEY_JUDGE_API_KEY", SECRET)
    FakeJudge.seen.clear()
    cases = [Case("q1", "7", "so it is 7"), Case("q2", "7", "it is 8"), Case("SLOW", "7", "7"),
             Case("BROKEN", "7", "7"), Case("GARBAGE", "7", "7"), Case("NOJSON", "7", "7")]
    verdicts, tally = judge_all(config(judge_url), cases)
    assert verdicts == [True, False, None, None, None, None]
    assert tally == {"yes": 1, "no": 1, "timeout": 1, "error": 2, "unparseable": 1}
    auth, body = FakeJudge.seen[0]
    assert auth == f"Bearer {SECRET}"  # the key from the environment, sent as a bearer token
    assert body["model"] == "judge-70b" and body["temperature"] == 0
    assert "determine whether the answers in the two responses" in body["messages"][0]["content"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_requests_to_an_endpoint_that_is_down_are_counted() -> None:
    verdicts, tally = judge_all(config(f"http://127.0.0.1:{free_port()}/v1"), [Case("q", "7", "7")] * 3)
    assert verdicts == [None] * 3 and tally["error"] == 3


@pytest.mark.slow
def test_a_judge_that_is_down_stops_evaluation_before_it_starts(judge_url, cli, tmp_path) -> None:
    from sftkey_lora.errors import UserError
    from sftkey_lora.evaluation.judge import check_reachable

    check_reachable(config(judge_url))  # up: nothing to say
    with pytest.raises(UserError, match="eval.judge.url: the judge at .* cannot be used"):
        check_reachable(config(f"http://127.0.0.1:{free_port()}/v1"))
    down = f"eval.judge.url=http://127.0.0.1:{free_port()}/v1"
    code, _, err = cli("eval", "builtin:tiny", "--limit", "1", "--output", str(tmp_path / "ev"),
                       "--set", down, "--set", "eval.judge.model=j")
    assert code == 2 and "eval.judge.url: the judge at" in err and "Traceback" not in err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_judge_verdicts_replace_the_exact_check_where_given(judge_url, monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("SFTKEY_JUDGE_API_KEY", SECRET)
    doc = {"reference": "7", "kind": "math", "labels": [], "alpha": 0.7, "tags": list(PAPER_TAGS.all)}
    # (question, reference, output): the exact check calls each of them right.
    cases = [("q1", "7", "<Thinking>x</Thinking><Answer>seven, i.e. 7</Answer>"),  # judge: yes
             ("q2", "8 exactly", "<Thinking>x</Thinking><Answer>7 or 8</Answer>"),  # judge: no
             ("SLOW", "7", "<Thinking>x</Thinking><Answer>7</Answer>")]  # no verdict: exact check stays
    records = [{"doc": {**doc, "question": q, "reference": ref}, "resps": [[out]], "acc": 1.0, "fmt": 1.0,
                "fmt_tags": 1.0, "score": 1.0} for q, ref, out in cases]
    rows, metrics = grade_samples(records, EvalConfig(judge=config(judge_url)))
    assert [row["judge"] for row in rows] == [True, False, None]
    assert [row["acc"] for row in rows] == [1.0, 0.0, 1.0]
    assert metrics["acc"] == pytest.approx(2 / 3) and metrics["acc_exact"] == pytest.approx(1.0)
    assert metrics["score"] == pytest.approx(0.7 * 2 / 3 + 0.3)
    assert metrics["acc_se"] == pytest.approx(statistics.stdev([1.0, 0.0, 1.0]) / 3 ** 0.5)
    assert metrics["judge"]["timeout"] == 1 and "1 of 3 samples without a verdict" in caplog.text
    assert SECRET not in json.dumps(rows) + json.dumps(metrics)


@pytest.mark.parametrize("reply, verdict", [("Yes", True), ("no.", False), ("  YES, the same", True),
                                            ("They are the same: yes", True), ("No, they differ", False)])
def test_replies_are_read_as_yes_or_no(reply: str, verdict: bool) -> None:
    assert parse_reply(reply) is verdict


@pytest.mark.parametrize("reply", ["", "Perhaps", "Nope", "maybe yes, maybe no"])
def test_other_replies_are_unparseable(reply: str) -> None:
    with pytest.raises(JudgeFailure) as caught:
        parse_reply(reply)
    assert caught.value.kind == "unparseable"


def test_groups_average_their_tasks_equally() -> None:
    from sftkey_lora.evaluation.harness import group_means

    errors = {"a": 0.3, "b": 0.4}
    names = ("acc", "fmt", "fmt_tags", "score")
    metrics = {f"sftkey_{t}": {**{f"{name}_se": errors[t] for name in names}, **m}
               for t, m in (("a", {"acc": 1.0, "fmt": 0.0, "fmt_tags": 0.0, "score": 0.7, "n": 10}),
                            ("b", {"acc": 0.5, "fmt": 1.0, "fmt_tags": 1.0, "score": 0.65, "n": 1000}))}
    groups = group_means(metrics, {"sftkey": ["sftkey_a", "sftkey_b"], "sftkey_a": [], "other": ["sftkey_c"]})
    assert list(groups) == ["sftkey"]
    group = groups["sftkey"]
    assert {name: group[name] for name in ("acc", "fmt", "fmt_tags", "tasks")} == {
        "acc": 0.75, "fmt": 0.5, "fmt_tags": 0.5, "tasks": ["sftkey_a", "sftkey_b"]}
    assert group["score"] == pytest.approx(0.675)
    assert group["acc_se"] == pytest.approx(0.25)  # of the mean of two tasks: √(0.3² + 0.4²) / 2


@pytest.mark.slow
def test_the_api_key_is_never_written(judge_url, cli, tmp_path, monkeypatch) -> None:
    """Evaluation with a judge: the key, read from the environment, is in no file written and in
    nothing printed."""
    monkeypatch.setenv("SFTKEY_JUDGE_API_KEY", SECRET)
    out = tmp_path / "ev"
    code, stdout, stderr = cli("eval", "builtin:tiny", "--limit", "2", "--output", str(out),
                               "--set", f"eval.judge.url={judge_url}", "--set", "eval.judge.model=j")
    assert code == 0, stderr
    written = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "metrics.json" for path in written)
    assert all(SECRET.encode() not in path.read_bytes() for path in written)
    assert SECRET not in stdout + stderr
    judged = json.loads((out / "metrics.json").read_text())["sftkey_synthetic"]["judge"]
    assert judged["yes"] + judged["no"] == 2  # the judge was asked, with the key
