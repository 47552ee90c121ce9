"""Request and response schemas of the API (the OpenAPI document is generated from them)."""

from __future__ import annotations

from functools import cache

from marshmallow import Schema, fields, validate

from worker.engine.gates import Verdict
from worker.engine.suites import SUITES

from ..store.models import AuditStatus
from .suite_schemas import suites_schema

#: every integer a client sends fits the store's and torch's int64
INT64_MAX = 2**63 - 1
#: pages: page * page_size stays far inside int64 (the offset a database computes)
MAX_PAGE, MAX_PAGE_SIZE = 1_000_000, 200
MAX_LABEL, MAX_ID = 200, 255


class ErrorSchema(Schema):
    """The one error body of every 4xx and 5xx."""

    status = fields.Integer(required=True, metadata={"description": "HTTP status"})
    code = fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = fields.String(required=True, metadata={"description": "what went wrong and what to fix"})
    details = fields.Dict(required=True, metadata={"description": "structured details, e.g. per-field validation "
                                                                  "errors (an empty object when there are none)"})


GATE_DOC = "'SUITE.METRIC OP NUMBER' (e.g. 'clean.top1 >= 0.9') or {metric, op, threshold}"
SCHEDULE_GATES = "a schedule needs at least one gate: its runs would have nothing to judge (no verdict)"
VERDICT_DOC = ("once succeeded: pass (every gate passed), fail (a gate did not pass) or none (no gates were set, "
               "so nothing was judged; not a pass); null before")
DATASET_DOC = ("a reference string (builtin:digits, imagefolder:<path>, torchvision:<Name>:<root>[:split], "
               "npz:<path>) or the object {kind, name/path/root, split, n_samples, seed, classes, label_sets} "
               "(label_sets: a JSON file of valid labels per sample under the data roots)")


def audit_request_schema() -> type[Schema]:
    """The audit request; rebuilt whenever the suite registry changes (a plugin added a suite)."""
    return _request_schemas(tuple(sorted(SUITES)))[0]


def schedule_request_schema() -> type[Schema]:
    return _request_schemas(tuple(sorted(SUITES)))[1]


@cache
def _request_schemas(suite_names: tuple[str, ...]) -> tuple[type[Schema], type[Schema]]:
    class AuditRequest(Schema):
        model = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ID), metadata={
            "description": "id of a registered model (or, in a multipart request, the parts "
                           "'checkpoint' and 'card' and this body as the JSON part 'spec')"})
        dataset = fields.Raw(required=True, metadata={"description": DATASET_DOC})
        suites = fields.Nested(suites_schema(), load_default=dict,
                               metadata={"description": "suite name -> parameters (null: defaults); "
                                                        "clean always runs"})
        gates = fields.List(fields.Raw(), load_default=list, metadata={
            "description": f"{GATE_DOC}; without any, nothing is judged and the verdict is none (not pass)"})
        seed = fields.Integer(strict=True, validate=validate.Range(min=0, max=INT64_MAX), load_default=0)
        label = fields.String(allow_none=True, validate=validate.Length(max=MAX_LABEL), load_default=None)
        baseline = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_ID), load_default=None,
                                 metadata={"description": "id of a succeeded audit of yours that gates written "
                                           "against a baseline compare with ('clean.top1 >= baseline - 0.05'); "
                                           "for a schedule, leave it out to compare each run with the previous "
                                           "successful one"})
        accept_unreliable = fields.Boolean(truthy={True}, falsy={False}, load_default=False, metadata={
            "description": "let gates pass on attack metrics that a sanity flag makes unreliable (masked "
                           "gradients, randomness) when no gradient-free attack backs them; recorded in the report"})

    class ScheduleRequest(AuditRequest):
        cron = fields.String(required=True, validate=validate.Length(min=1, max=100),
                             metadata={"description": "cron expression in UTC, e.g. '0 2 * * *'"})
        # a nightly audit with nothing to judge has no verdict: a mistake, refused at creation
        gates = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1, error=SCHEDULE_GATES),
                            error_messages={"required": SCHEDULE_GATES, "null": SCHEDULE_GATES},
                            metadata={"description": f"{GATE_DOC}; at least one"})

    return AuditRequest, ScheduleRequest


class ModelSchema(Schema):
    id = fields.String()
    name = fields.String()
    sha256 = fields.String()
    format = fields.String()
    kind = fields.String(metadata={"enum": ["classifier", "generator"]})
    size_bytes = fields.Integer()
    card = fields.Dict()
    created_at = fields.DateTime()


class ModelUploadSchema(Schema):
    checkpoint = fields.Raw(required=True, metadata={"type": "string", "format": "binary",
                                                     "description": "the checkpoint file"})
    card = fields.Raw(metadata={"type": "string", "format": "binary",
                                "description": "the model card (JSON), as a file or a form field; required"})
    external_data = fields.Raw(metadata={"type": "string", "format": "binary", "description":
                                         "an ONNX checkpoint's external data file (the file its tensors' "
                                         "'location' names, e.g. model.onnx.data); repeat the part for several "
                                         "files (at most 16). Or send one zip holding the .onnx file and its "
                                         "data files as 'checkpoint'"})
    kind = fields.String(metadata={"enum": ["classifier", "generator"], "description":
                                   "classifier (default: an audited model or a surrogate) or generator (for the "
                                   "perturbation suite's generator layers; the card is a generator card)"})


def _status() -> fields.String:
    return fields.String(metadata={"enum": [s.value for s in AuditStatus]})


def _verdict() -> fields.String:
    # OpenAPI 3.0.3: a nullable enum lists null among its values
    return fields.String(allow_none=True, metadata={"enum": [*(v.value for v in Verdict), None],
                                                    "description": VERDICT_DOC})


class AuditCreatedSchema(Schema):
    id = fields.String()
    status = _status()


class AuditSummarySchema(Schema):
    id = fields.String()
    status = _status()
    model_id = fields.String()
    schedule_id = fields.String(allow_none=True)
    label = fields.String(allow_none=True)
    verdict = _verdict()
    progress = fields.Dict(keys=fields.String(), values=fields.Float(),
                           metadata={"description": "suite -> fraction done (0-1)"})
    attempts = fields.Integer()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    error = fields.Dict(allow_none=True, metadata={"description": "{code, message} of a failed audit"})


class QueueSchema(Schema):
    position = fields.Integer(metadata={"description": "1 = the next audit a free worker takes; the queued audits "
                                                      "of every tenant that the fair order puts before this one"})
    estimated_start_at = fields.DateTime(metadata={
        "description": "now plus the expected time left of the running audits and of the audits ahead, over the "
                       "workers busy now"})
    basis = fields.String(metadata={"enum": ["measured", "default"], "description": "what the expected durations "
                                    "come from: recent audits (measured) or a default when none has finished"})


class AuditSchema(AuditSummarySchema):
    queue = fields.Nested(QueueSchema, allow_none=True, metadata={
        "description": "while queued: the audit's place in the queue and its estimated start (null otherwise)"})
    request = fields.Dict(metadata={"description": "the validated request"})
    report = fields.Dict(allow_none=True, metadata={"description": "the report (api_spec/report.schema.json)"})


class PageQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    page_size = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))


class AuditQuerySchema(PageQuerySchema):
    status = fields.Enum(AuditStatus, by_value=True)
    model = fields.String(validate=validate.Length(max=MAX_ID), metadata={"description": "model id"})
    label = fields.String(validate=validate.Length(max=MAX_LABEL))


class PageSchema(Schema):
    """The paging fields every list answer has; subclasses add ``items``."""

    page = fields.Integer()
    page_size = fields.Integer()
    total = fields.Integer()


class AuditPageSchema(PageSchema):
    items = fields.List(fields.Nested(AuditSummarySchema))


class ModelPageSchema(PageSchema):
    items = fields.List(fields.Nested(ModelSchema))


class ArtifactSchema(Schema):
    name = fields.String(metadata={"description": "path under the audit's artifacts/, e.g. clean/reliability.png"})
    size_bytes = fields.Integer()
    url = fields.String()


class ArtifactListSchema(Schema):
    items = fields.List(fields.Nested(ArtifactSchema))


class ScheduleSchema(Schema):
    id = fields.String()
    model_id = fields.String()
    cron = fields.String()
    label = fields.String(allow_none=True)
    request = fields.Dict()
    enabled = fields.Boolean()
    created_at = fields.DateTime()
    next_run_at = fields.DateTime()
    last_run_at = fields.DateTime(allow_none=True)


class SchedulePageSchema(PageSchema):
    items = fields.List(fields.Nested(ScheduleSchema))


class RunSchema(Schema):
    audit_id = fields.String()
    status = _status()
    verdict = _verdict()
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
    metrics = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True),
                          metadata={"description": "headline metric path -> value"})
    delta = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True),
                        metadata={"description": "headline metric path -> change since the previous "
                                                 "succeeded run (null when either is missing)"})
    baseline_id = fields.String(allow_none=True, metadata={"description": "the previous succeeded run compared with"})
    changes = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "how many metrics regressed, improved, changed, ... since that run (as in /compare)"})
    regressions = fields.List(fields.Dict(), metadata={
        "description": "the largest regressions since that run: {metric, baseline, value, delta}"})


class RunListSchema(Schema):
    items = fields.List(fields.Nested(RunSchema))


class CompareQuerySchema(Schema):
    baseline = fields.String(validate=validate.Length(min=1, max=MAX_ID), metadata={
        "description": "the audit to compare with (default: the baseline the audit was judged against)"})


class ChangeSchema(Schema):
    metric = fields.String(metadata={"description": "SUITE.path of the metric leaf"})
    change = fields.String(metadata={"enum": ["regression", "changed", "improvement", "timing", "added", "removed"]})
    better = fields.String(metadata={"enum": ["higher", "lower", "neither"],
                                     "description": "which way the metric improves"})
    unit = fields.String()
    baseline = fields.Float(allow_none=True)
    value = fields.Float(allow_none=True)
    delta = fields.Float(allow_none=True)
    size = fields.Float(allow_none=True, metadata={"description": "how large the change is: points for shares, "
                                                                  "relative to the baseline otherwise"})
    outside_baseline_ci95 = fields.Boolean(allow_none=True, metadata={
        "description": "the value lies outside the baseline's 95% interval (null: no interval)"})


class ComparisonSchema(Schema):
    baseline = fields.Dict(metadata={"description": "{audit_id, finished, model_sha256, n_samples}"})
    current = fields.Dict(metadata={"description": "{audit_id, finished, model_sha256, n_samples}"})
    verdict = fields.Dict(metadata={"description": "{baseline, current}: each report's verdict (pass, fail or none)"})
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                         metadata={"description": "change kind -> number of metrics, and unchanged"})
    warnings = fields.List(fields.String(), metadata={"description": "why numbers may differ besides the model"})
    changes = fields.List(fields.Nested(ChangeSchema), metadata={
        "description": "every metric that changed: regressions first (largest first), then other changes, "
                       "improvements, timings, and metrics only one report has"})
