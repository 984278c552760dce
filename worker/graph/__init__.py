"""The Graph Send API: the client, its transport and the error tree with its one ``classify()``.

``errors`` holds the hierarchy (drawn in its docstring) and the only code that reads Graph's
codes; ``client`` the per-process Send API client; ``transport`` the default httpx transport.
"""

from worker.graph.client import GraphClient, SendResult
from worker.graph.errors import (
    AmbiguousError,
    ErrorInfo,
    GraphError,
    PagePausedError,
    PageRestrictedError,
    PermanentError,
    RateLimitedError,
    RecipientUnreachableError,
    TagAbuseError,
    TagRejectedError,
    TemplatePausedError,
    TemplateRejectedError,
    TokenInvalidError,
    TransientError,
    UnconfirmedSendError,
    WindowClosedError,
    classify,
    from_response,
    from_success,
    from_transport,
    parse_buc_usage,
    parse_buc_wait,
)

__all__ = [
    "AmbiguousError",
    "ErrorInfo",
    "GraphClient",
    "GraphError",
    "PagePausedError",
    "PageRestrictedError",
    "PermanentError",
    "RateLimitedError",
    "RecipientUnreachableError",
    "SendResult",
    "TagAbuseError",
    "TagRejectedError",
    "TemplatePausedError",
    "TemplateRejectedError",
    "TokenInvalidError",
    "TransientError",
    "UnconfirmedSendError",
    "WindowClosedError",
    "classify",
    "from_response",
    "from_success",
    "from_transport",
    "parse_buc_usage",
    "parse_buc_wait",
]
