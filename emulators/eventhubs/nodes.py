"""The endpoint's request-response nodes: ``$cbs`` (``put-token``, with the shared access
signature checked as the service checks it) and ``$management`` (``READ`` of the hub or of a
partition). Each answers one request message with a status, a description and a body; the
connection keeps the tokens it grants and sends the replies.
"""
import base64
import hashlib
import hmac
import time
import urllib.parse
import uuid
from typing import Any, NamedTuple, Optional

from emulators.eventhubs.codec import Array, Int, Timestamp
from emulators.eventhubs.frames import AMQP_VALUE, APPLICATION_PROPERTIES, PROPERTIES, Message, \
    message_bytes
from emulators.eventhubs.hub import Hub


def audience_path(audience: str) -> tuple:
    """``sb://host:port/Hub/ConsumerGroups/X`` -> ``('hub', 'consumergroups', 'x')``."""
    parsed = urllib.parse.urlparse(audience)
    path = parsed.path if parsed.scheme else audience
    return tuple(part.lower() for part in path.split("/") if part)


def check_sas_token(token: Any, audience: Optional[str], key_name: str, key: str,
                    now: Optional[float] = None) -> tuple:
    """Validates a CBS ``put-token`` SAS token; returns ``(ok, reason)``.

    The signature is recomputed as the service does, ``base64(HMAC-SHA256(key, quote_plus(sr) +
    "\\n" + se))``, and compared in constant time. The reason never contains the token.
    """
    if not isinstance(token, str) or not token.startswith("SharedAccessSignature "):
        return False, "not a shared access signature"
    fields = dict(urllib.parse.parse_qsl(token[len("SharedAccessSignature "):],
                                         keep_blank_values=True))
    resource, signature, expiry, name = (fields.get("sr"), fields.get("sig"), fields.get("se"),
                                         fields.get("skn"))
    if not (resource and signature and expiry and name):
        return False, "the signature lacks sr, sig, se or skn"
    # The SDK quotes the key name twice (quote_plus, then urlencode); accept either form.
    if key_name not in (name, urllib.parse.unquote_plus(name)):
        return False, "unknown key name"
    try:
        expires = int(expiry)
    except ValueError:
        return False, "bad expiry"
    if expires <= (time.time() if now is None else now):
        return False, "the signature has expired"
    if audience and audience_path(audience) != audience_path(resource):
        return False, "the signature is for another resource"
    to_sign = ("%s\n%s" % (urllib.parse.quote_plus(resource), expiry)).encode("utf-8")
    expected = base64.b64encode(hmac.new(key.encode("utf-8"), to_sign, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature.encode("utf-8")):
        return False, "invalid signature"
    return True, "OK"



class TokenAnswer(NamedTuple):
    """The ``$cbs`` node's answer to one ``put-token`` request."""
    status: int
    description: str
    grant: Optional[tuple] = None    # (audience path, expiry in epoch seconds) of a valid token
    refusal: Optional[str] = None    # why a signature was refused (never the token itself)


def put_token(message: Message, hub_name: str, key_name: str, key: str) -> TokenAnswer:
    """Checks the token of a CBS ``put-token`` request for an entity of the hub ``hub_name``."""
    if message.app("operation") != "put-token":
        return TokenAnswer(400, "Unsupported CBS operation.")
    audience = message.app("name")
    ok, reason = check_sas_token(message.value, audience, key_name, key)
    if not ok:
        return TokenAnswer(401, "Unauthorized: InvalidSignature: %s." % reason, refusal=reason)
    path = audience_path(audience)
    if not path or path[0] != hub_name.lower():
        return TokenAnswer(404, "The messaging entity '%s' could not be found." % "/".join(path))
    fields = dict(urllib.parse.parse_qsl(message.value[len("SharedAccessSignature "):]))
    return TokenAnswer(200, "OK", grant=(path, int(fields["se"])))


def read_management(message: Message, hub: Hub, authorised: bool) -> tuple:
    """``(status, description, body)`` of a ``$management`` request; ``authorised`` says whether
    the connection holds a valid token for the hub."""
    if message.app("operation") != "READ":
        return 400, "Unsupported management operation.", None
    if not authorised:
        return 401, "Unauthorized access. A valid token is required for management.", None
    name = message.app("name")
    if not isinstance(name, str) or name.lower() != hub.name.lower():
        return 404, "The messaging entity '%s' could not be found." % name, None
    kind = message.app("type")
    if kind == "com.microsoft:eventhub":
        return 200, "OK", {
            "name": hub.name, "type": "com.microsoft:eventhub",
            "created_at": Timestamp(hub.created_ms),
            "partition_count": Int(len(hub.partition_ids)),
            "partition_ids": Array(hub.partition_ids)}
    if kind == "com.microsoft:partition":
        partition = hub.partition_index(str(message.app("partition")))
        if partition is None:
            return 404, "The partition '%s' could not be found." % message.app("partition"), None
        return 200, "OK", hub.partition_info(partition)
    return 400, "Unsupported management type.", None


def reply_bytes(request: Message, status: int, description: str, body: Any) -> bytes:
    """The encoded response to ``request``: its message id as correlation id, sent to its
    reply-to address."""
    properties = [uuid.uuid4(), None, request.property(4), None, None, request.property(0)]
    return message_bytes([(PROPERTIES, properties),
                          (APPLICATION_PROPERTIES, {"status-code": Int(status),
                                                    "status-description": description}),
                          (AMQP_VALUE, body)])
