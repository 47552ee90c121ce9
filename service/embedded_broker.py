"""The embedded broker: kombu's SQLAlchemy transport (``sqla+sqlite:///...``), polled often.

Kombu's virtual transports sleep ``polling_interval`` (1 s) between empty reads, so an idle
``robustaudit serve`` took up to a second to start a new audit. The interval cannot be passed as a
transport option: the SQLAlchemy channel hands every option it does not know to
``create_engine``, which refuses it. A subclass with its own interval is the one knob left.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy

#: seconds between two reads of an empty queue table; a read is one short SQLite transaction
POLL_S = 0.1
#: the URL prefix that selects kombu's SQLAlchemy transport
SQLA_PREFIX = "sqla+"
#: Celery's ``broker_transport`` for a ``sqla+`` URL (an import path is never taken from a URL)
TRANSPORT = f"{__name__}:Transport"


class Transport(sqlalchemy.Transport):
    """Kombu's SQLAlchemy transport with a :data:`POLL_S` polling interval."""

    polling_interval = POLL_S


def celery_broker(url: str) -> dict[str, str]:
    """Celery's broker settings for ``url``: a ``sqla+`` URL goes to :class:`Transport`."""
    if url.startswith(SQLA_PREFIX):
        return {"broker_url": url[len(SQLA_PREFIX):], "broker_transport": TRANSPORT}
    return {"broker_url": url}
