"""A concise console logger for people at a terminal (the demo): one line per message, one line
per failed step, no engine chatter and no stack traces (those stay in the run's event log)."""

import logging
import sys

import dagster as dg


class ProgressFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or ""
        event = meta.get("dagster_event")
        message = meta.get("orig_message") or record.getMessage()
        if event is not None and event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            root = error.cause or error if error is not None else None
            first = (root.message.strip().splitlines() or ["(no message)"])[0] if root else message
            return f"    {step} FAILED: {first[:400]}"
        return f"    {step}: {message}" if step else f"    {message}"


class ProgressFilter(logging.Filter):
    """User messages (context.log) and step failures; engine events are left to the UI."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is not None:
            return event.is_step_failure
        # A check that does not apply to a variant is skipped on purpose (not yielded); the
        # engine's note about it belongs in the UI, not on the terminal.
        return "did not yield or return expected outputs" not in (meta.get("orig_message") or "")


@dg.logger(
    {"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="One line per message and per failed step; full errors stay in the run's event log.",
)
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("llmopt_progress", level=init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ProgressFormatter())
    handler.addFilter(ProgressFilter())
    logger.addHandler(handler)
    return logger


@dg.definitions
def loggers() -> dg.Definitions:
    return dg.Definitions(loggers={"progress": progress_logger})
