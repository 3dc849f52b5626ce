"""radaudit's terminal log for runs started from the CLI: one short line per message.

Dagster's default console logger prints every engine event at DEBUG and a step's failure with
its whole stack trace; at night, in a cron mail, that buries the one line that matters. This
logger prints to stdout what the steps say (``context.log``), when each step starts and ends, and
a failed step as one line; the CLI then prints the reason to stderr (``radaudit <command>: error:
...``), the only line there. The run's
full record, traces included, stays in the Dagster instance (``dagster dev`` shows it).
"""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg

_SHOWN_EVENTS = {"STEP_START": "started", "STEP_SUCCESS": "done", "STEP_FAILURE": "failed",
                 "STEP_UP_FOR_RETRY": "failed, will be retried"}


class StepLineFormatter(logging.Formatter):
    """``HH:MM:SS step: message``, with Dagster's engine events reduced to started/done/failed."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key") or "run"
        event = meta.get("dagster_event")
        if event is not None:
            text = _SHOWN_EVENTS[event.event_type_value]
        else:
            text = (str(meta.get("orig_message", record.getMessage())).splitlines() or [""])[0] if meta \
                else record.getMessage()
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {step}: {level}{text}"


class _StepLines(logging.Filter):
    """Keeps messages at INFO and above and the step events of :data:`_SHOWN_EVENTS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        if event is not None:
            return event.event_type_value in _SHOWN_EVENTS
        return record.levelno >= logging.INFO


@dg.logger(description="radaudit's terminal log: one line per message, a failed step without its trace")
def step_lines(init_context: dg.InitLoggerContext) -> logging.Logger:
    """The logger the CLI's runs use instead of Dagster's console logger."""
    logger = logging.Logger("radaudit.run", level=logging.DEBUG)
    handler = logging.StreamHandler(sys.stdout)  # stderr is for the CLI's one error line
    handler.setFormatter(StepLineFormatter())
    handler.addFilter(_StepLines())
    logger.addHandler(handler)
    return logger
