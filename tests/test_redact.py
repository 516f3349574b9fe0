from cdp_activation.core.redact import Redactor, collect_secrets


def test_known_secrets_and_secret_looking_fragments_are_masked():
    raw = {"works": [{"config": {"connection_string": "Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0",
                                 "headers": {"Authorization": "Bearer tok-123456"}, "password": "hunter22"}}]}
    redact = Redactor(collect_secrets(raw))
    text = ("cs Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0 pw hunter22 "
            "hdr tok-123456 url https://a.blob/x?sv=1&sig=abcDEF%2B&se=2 Authorization: Bearer zzzzzz "
            "AccountKey=Zm9vYmFy; X-Signature: t=1,v1=deadbeef")
    out = redact(text)
    for secret in ("c2VjcmV0", "hunter22", "tok-123456", "abcDEF%2B", "zzzzzz", "Zm9vYmFy", "deadbeef"):
        assert secret not in out, (secret, out)
    assert "https://a.blob/x" in out


def test_the_one_scrubber_masks_bearer_tokens_and_url_passwords_anywhere():
    """Texts the scrubber was told nothing about: logs, errors and dead-letter reasons get the
    same masking as work-event notes."""
    from cdp_activation.core.redact import scrub
    text = ("POST failed: proxy https://alice:s3cretPa55@proxy.example/x said 401; "
            "token Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig and Basic YWxpY2U6c2VjcmV0")
    out = scrub(text)
    for secret in ("s3cretPa55", "eyJhbGciOiJIUzI1NiJ9.e30.sig", "YWxpY2U6c2VjcmV0"):
        assert secret not in out, (secret, out)
    assert "https://alice:****@proxy.example/x" in out and "said 401" in out
    assert scrub("3 files written; basic checks passed") == "3 files written; basic checks passed"
    assert Redactor(["hunter22"])("pw hunter22 at ftp://bob:pw1234@h") == "pw **** at ftp://bob:****@h"


def test_alert_settings_secrets_and_url_display():
    from cdp_activation.core.workflows import AlertSettings
    from cdp_activation.core.redact import redact_url, settings_secrets
    settings = AlertSettings(None, None,
                             webhook_url="https://hooks.example/services/T0AAAAAAAAAA/B0?x=12345",
                             headers={"Authorization": "Bearer tok-1234567890"},
                             signing_secret="whsec-0001", password=None)
    found = settings_secrets(settings)
    for value in ("Bearer tok-1234567890", "tok-1234567890", "whsec-0001", "x=12345",
                  "T0AAAAAAAAAA", "/services/T0AAAAAAAAAA/B0"):
        assert value in found, (value, found)
    assert found == sorted(found, key=len, reverse=True)
    assert redact_url(settings.webhook_url) == "https://hooks.example/…"
    assert redact_url("http://user:pw@[::1]:8080") == "http://[::1]:8080"
