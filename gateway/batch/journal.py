"""`moe batch run`'s lines and journal: OpenAI Batch API input and output lines, and OUT.partial, the journal
that makes a run resumable (see gateway/batch/runner.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import IO, Any

from gateway.bodies import BodyError, bad_request, parsed_body
from gateway.chat.protocol import ChatCompletionRequest
from gateway.decisions.record import DecisionRecord

CHAT_URL = "/v1/chat/completions"


class BatchError(Exception):
    """The batch cannot run at all (as opposed to one bad line); the message says what to do."""


class LineError(Exception):
    """A line that is no chat request: reported in that line's `error`, the batch goes on."""

    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.custom_id = custom_id


# -- input and output lines ---------------------------------------------------------------------
def parse_line(raw: bytes, number: int) -> tuple[str, dict[str, Any]]:
    """(custom_id, chat body) of one line; bare bodies are named `line-<number>`."""
    try:
        line = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineError("invalid_json", f"line {number} is not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise LineError("invalid_line", f"line {number} is not a JSON object")
    if "body" not in line and "custom_id" not in line:
        return f"line-{number}", line
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("invalid_custom_id", f"line {number}: custom_id must be a non-empty string")
    if line.get("method", "POST") != "POST" or line.get("url", CHAT_URL) != CHAT_URL:
        raise LineError("unsupported_url", f"line {number}: only POST {CHAT_URL} is supported", custom_id)
    if not isinstance(line.get("body"), dict):
        raise LineError("invalid_body", f"line {number}: body must be a JSON object", custom_id)
    return custom_id, line["body"]


def validate_body(body: dict[str, Any]) -> ChatCompletionRequest:
    """The body as the gateway would read it, or the 400 the gateway would answer."""
    try:
        # A batch answer is one body: a `stream` flag is ignored (and not recorded as a streamed request).
        return parsed_body({**body, "stream": False, "stream_options": None}, ChatCompletionRequest)
    except BodyError as error:
        raise bad_request(error) from None


def answer_line(custom_id: str, request_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's Batch output line for a request that got an HTTP answer (an error status included)."""
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }


def succeeded(output: dict[str, Any]) -> bool:
    """Whether an output line is an answer (OpenAI's output file) rather than an error (its error file)."""
    return output["response"] is not None and 200 <= output["response"]["status_code"] < 300


def error_line(custom_id: str | None, number: int, code: str, message: str) -> dict[str, Any]:
    """OpenAI's Batch output line for a line that never became a request."""
    return {
        "id": f"batch_req_{uuid.uuid4()}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message, "line": number},
    }


# -- the journal --------------------------------------------------------------------------------
class Journal:
    """OUT.partial: a header naming the input, then one entry per finished request, appended as it finishes.

    Each entry is flushed to the OS as soon as it is written, which is what survives a SIGKILL
    (fsync would only add protection against power loss, at a cost per request).
    """

    def __init__(self, path: Path, input_sha256: str) -> None:
        self.path = path
        self.entries: dict[int, dict[str, Any]] = {}  # line number -> {"line", "output", "record"}
        if path.exists():
            self._load(input_sha256)
        else:
            path.write_text(json.dumps({"input_sha256": input_sha256}) + "\n")
        self._file: IO[bytes] = path.open("ab")

    def _load(self, input_sha256: str) -> None:
        data = self.path.read_bytes()
        *complete, torn = data.split(b"\n")
        if torn:  # a kill in the middle of a write leaves a last line without its newline
            with self.path.open("r+b") as fh:
                fh.truncate(len(data) - len(torn))
        if not complete:
            self.path.write_text(json.dumps({"input_sha256": input_sha256}) + "\n")
            return
        if json.loads(complete[0]).get("input_sha256") != input_sha256:
            raise BatchError(f"{self.path} belongs to another input file; delete it to start this batch afresh")
        for raw in complete[1:]:
            entry = json.loads(raw)
            self.entries[entry["line"]] = entry

    def append(self, number: int, output: dict[str, Any], record: DecisionRecord | None) -> None:
        entry = {"line": number, "output": output, "record": json.loads(record.to_json()) if record else None}
        self._file.write((json.dumps(entry, separators=(",", ":")) + "\n").encode())
        self._file.flush()
        self.entries[number] = entry

    def records(self) -> list[DecisionRecord]:
        return [DecisionRecord.from_json(json.dumps(e["record"])) for e in self.entries.values() if e["record"]]

    def close(self) -> None:
        self._file.close()
